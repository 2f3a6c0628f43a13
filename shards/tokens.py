"""The token cache: FSQ codes of every frame, with clip boundaries and ground truth, memory-mapped.

Layout (``<out>/<dataset>/tokens/<tokenizer-id>/<split>/``):

    parts/<shard-stem>/codes.npy       uint16 [F, h, w]   FSQ indices of the shard's F frames
    parts/<shard-stem>/clips.npy       int64  [C, 4]      (first frame row, num_frames, episode, clip)
    parts/<shard-stem>/actions.npy     int64  [F] or [F, A]    (only when the clips have actions)
    parts/<shard-stem>/positions.npy   int64  [F, A, 2]        (only when the clips have positions)
    parts/<shard-stem>/rewards.npy     float32 [F], dones.npy bool [F]   (only when the clips have rewards)
    parts/<shard-stem>/keys.json       the C sample keys, in order
    index.json                          written last: parts in manifest order with counts, plus
                                        CacheInfo (tokenizer id, manifest hash, levels, grid, version)

One part per source shard, written to a temporary folder and renamed, so a killed precompute leaves
only complete parts and a rerun does the rest. Codes map back to FSQ vectors exactly
(``model.fsq.FSQ.indices_to_codes``), so caching codes loses nothing. The reader refuses a cache made
by another tokenizer or from other shards (``check``).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shards.manifest import MANIFEST_NAME
from shards.writer import fsync_dir

TOKEN_FORMAT_VERSION = 1
INDEX_NAME = "index.json"


class StaleCacheError(RuntimeError):
    """The cache was made by another tokenizer or from other shards than the ones asked for."""


@dataclass(frozen=True)
class CacheInfo:
    dataset: str
    split: str
    tokenizer_id: str  # sha256 prefix of the tokenizer checkpoint file
    manifest_sha256: str  # sha256 of the manifest.json the codes came from
    levels: tuple[int, ...]
    grid: tuple[int, int]  # (h, w) tokens per frame
    format_version: int = TOKEN_FORMAT_VERSION


def cache_dir(out: str | Path, dataset: str, tokenizer_id: str, split: str) -> Path:
    return Path(out) / dataset / "tokens" / tokenizer_id / split


def manifest_sha256(dataset_dir: str | Path) -> str:
    return hashlib.sha256((Path(dataset_dir) / MANIFEST_NAME).read_bytes()).hexdigest()


def file_id(path: str | Path, length: int = 16) -> str:
    """Short content hash of a file (the tokenizer id of a checkpoint)."""
    digest = hashlib.sha256()
    with open(Path(path).resolve(), "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:length]


# ----------------------------------------------------------------------------- writing


def part_done(split_dir: Path, shard_stem: str) -> bool:
    return (split_dir / "parts" / shard_stem / "keys.json").exists()


def write_part(
    split_dir: Path,
    shard_stem: str,
    codes: list[np.ndarray],
    keys: list[str],
    episodes: list[int],
    clip_ids: list[int],
    actions: list[np.ndarray] | None = None,
    positions: list[np.ndarray] | None = None,
    rewards: list[np.ndarray] | None = None,
    dones: list[np.ndarray] | None = None,
) -> None:
    """Write one shard's part atomically. ``codes[i]`` is clip i's uint16 [T_i, h, w]."""
    parts = split_dir / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    tmp = parts / f".{shard_stem}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    lengths = [len(c) for c in codes]
    starts = (
        np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if codes else np.zeros(0, np.int64)
    )
    clips = (
        np.stack([starts, lengths, episodes, clip_ids], axis=1).astype(np.int64)
        if codes
        else np.zeros((0, 4), np.int64)
    )
    arrays = {"codes": _concat(codes, np.uint16), "clips": clips}
    if actions is not None:
        arrays["actions"] = _concat(actions, np.int64)
    if positions is not None:
        arrays["positions"] = _concat(positions, np.int64)
    if rewards is not None and dones is not None:
        arrays["rewards"], arrays["dones"] = _concat(rewards, np.float32), _concat(dones, bool)
    for name, array in arrays.items():
        with open(tmp / f"{name}.npy", "wb") as f:
            np.save(f, array, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
    # keys.json last: its presence marks the part complete even before the rename is durable
    with open(tmp / "keys.json", "w") as f:
        json.dump(keys, f)
        f.flush()
        os.fsync(f.fileno())
    final = parts / shard_stem
    if final.exists():  # a part left by a run with the same inputs; replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(parts)


def _concat(arrays: list[np.ndarray], dtype) -> np.ndarray:
    if not arrays:
        return np.zeros(0, dtype)
    return np.ascontiguousarray(np.concatenate(arrays).astype(dtype, copy=False))


def write_index(split_dir: Path, info: CacheInfo, shard_stems: list[str]) -> None:
    """Write ``index.json`` once every part exists (call on one rank)."""
    parts = []
    for stem in shard_stems:
        clips = np.load(split_dir / "parts" / stem / "clips.npy", mmap_mode="r")
        parts.append(
            {"name": stem, "clips": len(clips), "frames": int(clips[:, 1].sum()) if len(clips) else 0}
        )
    index = {"info": asdict(info), "parts": parts}
    tmp = split_dir / f".{INDEX_NAME}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, split_dir / INDEX_NAME)
    fsync_dir(split_dir)


def clear_stale_temporaries(split_dir: Path) -> None:
    for tmp in (split_dir / "parts").glob(".*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- reading


class TokenCache:
    """Random access to the cached codes of one split, memory-mapped (no video decode, no tokenizer).

    ``clip(i)`` returns clip i's codes [T, h, w] (uint16 memmap view) and its ground truth.
    """

    def __init__(self, split_dir: str | Path) -> None:
        self.dir = Path(split_dir)
        path = self.dir / INDEX_NAME
        if not path.exists():
            raise FileNotFoundError(
                f"no token cache at {self.dir} ({INDEX_NAME} missing): run `make precompute` for this "
                "dataset and tokenizer first (an interrupted precompute resumes when rerun)"
            )
        index = json.loads(path.read_text())
        raw = index["info"]
        self.info = CacheInfo(**{**raw, "levels": tuple(raw["levels"]), "grid": tuple(raw["grid"])})
        if self.info.format_version != TOKEN_FORMAT_VERSION:
            raise StaleCacheError(
                f"{self.dir} has token format {self.info.format_version}, this code reads "
                f"{TOKEN_FORMAT_VERSION}: rerun precompute"
            )
        self.parts = [p["name"] for p in index["parts"]]
        counts = [p["clips"] for p in index["parts"]]
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._arrays: dict[tuple[int, str], np.ndarray | None] = {}

    def check(self, tokenizer_id: str | None = None, manifest_hash: str | None = None) -> None:
        """Refuse a stale cache: another tokenizer, or shards that changed since it was made."""
        if tokenizer_id is not None and tokenizer_id != self.info.tokenizer_id:
            raise StaleCacheError(
                f"token cache {self.dir} was made by tokenizer {self.info.tokenizer_id}, but the run uses "
                f"{tokenizer_id}: rerun `make precompute` with this tokenizer (or use the old tokenizer)"
            )
        if manifest_hash is not None and manifest_hash != self.info.manifest_sha256:
            raise StaleCacheError(
                f"token cache {self.dir} was made from other shards than the current manifest: the dataset "
                "was re-ingested since; rerun `make precompute`"
            )

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def num_frames(self) -> int:
        return int(sum(len(self._array(p, "codes")) for p in range(len(self.parts))))

    def _array(self, part: int, name: str) -> np.ndarray | None:
        key = (part, name)
        if key not in self._arrays:
            path = self.dir / "parts" / self.parts[part] / f"{name}.npy"
            self._arrays[key] = np.load(path, mmap_mode="r") if path.exists() else None
        return self._arrays[key]

    def locate(self, i: int) -> tuple[int, int]:
        """Global clip index -> (part, clip within part)."""
        if not 0 <= i < len(self):
            raise IndexError(f"clip {i} out of range for {len(self)} clips")
        part = bisect.bisect_right(self._offsets, i) - 1
        return part, i - int(self._offsets[part])

    def keys(self) -> list[str]:
        """Sample keys of every clip, in cache order."""
        keys: list[str] = []
        for name in self.parts:
            keys.extend(json.loads((self.dir / "parts" / name / "keys.json").read_text()))
        return keys

    def clip_lengths(self) -> np.ndarray:
        """Frames of every clip, int64 [num_clips]."""
        if not self.parts:
            return np.zeros(0, np.int64)
        return np.concatenate([np.asarray(self._array(p, "clips")[:, 1]) for p in range(len(self.parts))])

    def clip(self, i: int, start: int = 0, length: int | None = None) -> dict[str, Any]:
        """Frames [start, start + length) of clip i: codes [L, h, w] and, when cached, actions / positions."""
        part, j = self.locate(i)
        row = self._array(part, "clips")[j]
        first, n = int(row[0]), int(row[1])
        length = n - start if length is None else length
        if start < 0 or start + length > n:
            raise IndexError(f"window [{start}, {start + length}) outside clip {i} of {n} frames")
        lo, hi = first + start, first + start + length
        out: dict[str, Any] = {
            "codes": self._array(part, "codes")[lo:hi],
            "episode": int(row[2]),
            "clip": int(row[3]),
        }
        for name in ("actions", "positions", "rewards", "dones"):
            array = self._array(part, name)
            if array is not None:
                out[name] = array[lo:hi]
        return out

    def require(self, name: str) -> None:
        """Raise, saying why and how to fix it, when the cache has no ``name`` (e.g. "rewards")."""
        if self.parts and self._array(0, name) is None:
            raise ValueError(
                f"the token cache {self.dir} holds no {name}: its clips have none (shards written before "
                f"format version 2, or a source without {name}); re-ingest the dataset and rerun precompute"
            )


class TokenWindows(torch.utils.data.Dataset):
    """Windows of ``window`` consecutive frames of cached codes, for training.

    Item i is window i of the enumeration (clip, start) over every clip with starts every ``stride``
    frames. Returns ``{"codes": int64 [window, h, w], "actions": int64 [window(, A)], ...}``. A plain
    map-style Dataset: use it with ``DistributedSampler`` (or any sampler) and a DataLoader.
    """

    def __init__(self, cache: TokenCache, window: int, stride: int | None = None) -> None:
        self.cache, self.window = cache, window
        stride = stride or window
        lengths = cache.clip_lengths()
        per_clip = np.maximum((lengths - window) // stride + 1, 0)
        if per_clip.sum() == 0:
            raise ValueError(f"no window of {window} frames fits in the clips of {cache.dir}")
        clips = np.repeat(np.arange(len(lengths)), per_clip)
        first = np.repeat(np.cumsum(per_clip) - per_clip, per_clip)
        starts = (np.arange(len(clips)) - first) * stride
        self.items = np.stack([clips, starts], axis=1).astype(np.int64)  # [num_windows, (clip, start)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        clip, start = (int(v) for v in self.items[i])
        data = self.cache.clip(clip, start, self.window)
        out = {"codes": torch.from_numpy(np.array(data["codes"], dtype=np.int64))}
        for name in ("actions", "positions"):
            if name in data:
                out[name] = torch.from_numpy(np.array(data[name], dtype=np.int64))
        for name in ("rewards", "dones"):  # float32 / bool, as cached
            if name in data:
                out[name] = torch.from_numpy(np.array(data[name]))
        return out
