"""The token cache: FSQ codes of every frame, with clip boundaries and ground truth, memory-mapped.

Layout (``<out>/<dataset>/tokens/<tokenizer-id>/<split>/``):

    parts/<shard-stem>/codes.npy       uint16 [F, h, w]   FSQ indices of the shard's F frames
    parts/<shard-stem>/clips.npy       int64  [C, 4]      (first frame row, num_frames, episode, clip)
    parts/<shard-stem>/actions.npy     int64  [F] or [F, A]    (only when the clips have actions)
    parts/<shard-stem>/positions.npy   int64  [F, A, 2]        (only when the clips have positions)
    parts/<shard-stem>/rewards.npy     float32 [F], dones.npy bool [F]   (only when the clips have rewards)
    parts/<shard-stem>/keys.json       the C sample keys, in order
    parts/<shard-stem>/part.json       written last: clips expected (manifest) and cached, complete or
                                        not and why, and the size + sha256 of every file above
    index.json                          written last: parts in manifest order with their part.json
                                        records, plus CacheInfo (tokenizer id, manifest hash, levels,
                                        grid, version)

and beside the splits (``<out>/<dataset>/tokens/<tokenizer-id>/``) ``source.json`` (the shards and
tokenizer the cache began from) and ``recon.json`` / ``recon.md`` (the tokenizer's Recon report). Only
this module knows the layout: the others ask ``cache_root`` / ``cache_dir`` / ``has_index``.

One part per source shard, written to a temporary folder and renamed, so a killed precompute leaves
only whole parts and a rerun does the rest. A part is done only when it holds every clip its shard's
manifest entry lists and its files match their checksums: a part from a short, missing or damaged
shard is written (with what could be read) but marked incomplete, and a rerun redoes it. Codes map
back to FSQ vectors exactly (``model.fsq.FSQ.indices_to_codes``), so caching codes loses nothing. The
reader refuses a cache made by another tokenizer or from other shards (``check``), names the parts that
are incomplete (``missing``), and checks every file against its checksum (``verify``).
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shards.files import DataFileError, read_json
from shards.integrity import require_complete
from shards.manifest import MANIFEST_NAME
from shards.writer import fsync_dir, sha256_file

TOKEN_FORMAT_VERSION = 2  # 2: part.json with counts, completeness and checksums
INDEX_NAME = "index.json"
PART_RECORD = "part.json"
SOURCE_NAME = "source.json"  # beside the splits: the shards (manifest hash) and tokenizer a cache began from
RECON_JSON, RECON_MD = "recon.json", "recon.md"  # beside the splits: the tokenizer's Recon report
RERUN = "rerun `make precompute` (it redoes incomplete or damaged parts)"


class StaleCacheError(RuntimeError):
    """The cache was made by another tokenizer or from other shards than the ones asked for."""


class CorruptCacheError(RuntimeError):
    """A part's files are missing or differ from the checksums written with them."""


@dataclass(frozen=True)
class CacheInfo:
    dataset: str
    split: str
    tokenizer_id: str  # sha256 prefix of the tokenizer checkpoint file
    manifest_sha256: str  # sha256 of the manifest.json the codes came from
    levels: tuple[int, ...]
    grid: tuple[int, int]  # (h, w) tokens per frame
    format_version: int = TOKEN_FORMAT_VERSION


def cache_root(out: str | Path, dataset: str, tokenizer_id: str) -> Path:
    """``<out>/<dataset>/tokens/<tokenizer-id>``: one tokenizer's cache of a dataset (its splits, the
    Recon report ``RECON_JSON``/``RECON_MD`` and the source record ``SOURCE_NAME``)."""
    return Path(out) / dataset / "tokens" / tokenizer_id


def cache_dir(out: str | Path, dataset: str, tokenizer_id: str, split: str) -> Path:
    """One split of the cache: ``cache_root(...) / split``."""
    return cache_root(out, dataset, tokenizer_id) / split


def has_index(split_dir: str | Path) -> bool:
    """Whether a split of the cache is written (its ``index.json`` exists; parts may still be incomplete)."""
    return (Path(split_dir) / INDEX_NAME).exists()


def manifest_sha256(dataset_dir: str | Path) -> str:
    return hashlib.sha256((Path(dataset_dir) / MANIFEST_NAME).read_bytes()).hexdigest()


def file_id(path: str | Path, length: int = 16) -> str:
    """Short content hash of a file (the tokenizer id of a checkpoint)."""
    return sha256_file(Path(path).resolve())[:length]


# ----------------------------------------------------------------------------- writing


def read_part_record(split_dir: Path, shard_stem: str) -> dict[str, Any] | None:
    """A part's ``part.json``, or None when the part is absent or its record unreadable."""
    path = split_dir / "parts" / shard_stem / PART_RECORD
    try:
        record = read_json(path, RERUN)
    except DataFileError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("files"), dict) else None


def file_problems(part_dir: Path, files: dict[str, dict[str, Any]], checksums: bool = True) -> list[str]:
    """What is wrong with a part's files against their record: missing, other size, other sha256."""
    problems = []
    for name, want in sorted(files.items()):
        path = part_dir / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif path.stat().st_size != want["bytes"]:
            problems.append(f"{path} has {path.stat().st_size} bytes, {want['bytes']} were written")
        elif checksums and sha256_file(path) != want["sha256"]:
            problems.append(f"{path} fails its sha256 check")
    return problems


def part_done(split_dir: Path, shard_stem: str, expected: int | None = None) -> bool:
    """True when the part is complete (every clip of its shard, ``expected`` when given) and its files
    match their checksums. Anything else is redone by precompute."""
    record = read_part_record(split_dir, shard_stem)
    if record is None or not record.get("complete") or (expected is not None and record["clips"] != expected):
        return False
    return not file_problems(split_dir / "parts" / shard_stem, record["files"])


def _write_durably(path: Path, data: bytes) -> dict[str, Any]:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


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
    expected: int | None = None,
    problem: str = "",
) -> dict[str, Any]:
    """Write one shard's part atomically and return its record. ``codes[i]`` is clip i's uint16
    [T_i, h, w]. The part is complete when there is no ``problem`` and it holds ``expected`` clips."""
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
    files = {f"{name}.npy": _write_durably(tmp / f"{name}.npy", _npy_bytes(a)) for name, a in arrays.items()}
    files["keys.json"] = _write_durably(tmp / "keys.json", json.dumps(keys).encode())
    if not problem and expected is not None and len(codes) != expected:
        problem = f"{len(codes)} of the {expected} clips its manifest entry lists were decoded"
    record = {
        "name": shard_stem,
        "clips": len(codes),
        "frames": int(sum(lengths)),
        "expected": len(codes) if expected is None else int(expected),
        "complete": not problem,
        "problem": problem,
        "files": files,
    }
    # part.json last: a part without one is unfinished, whatever else it holds
    _write_durably(tmp / PART_RECORD, json.dumps(record, sort_keys=True, indent=1).encode())
    final = parts / shard_stem
    if final.exists():  # a part left by an earlier run (incomplete or damaged); replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(parts)
    return record


def mark_incomplete(split_dir: Path, shard_stem: str, problem: str) -> None:
    """Record that a written part is not complete after all (its shard turned out to hold more clips
    than its manifest entry lists), so that training refuses it and a rerun redoes it."""
    path = split_dir / "parts" / shard_stem / PART_RECORD
    record = {**read_json(path, RERUN), "complete": False, "problem": problem}
    tmp = path.with_name(f".{PART_RECORD}.{uuid.uuid4().hex[:8]}.tmp")
    _write_durably(tmp, json.dumps(record, sort_keys=True, indent=1).encode())
    os.replace(tmp, path)


def _concat(arrays: list[np.ndarray], dtype) -> np.ndarray:
    if not arrays:
        return np.zeros(0, dtype)
    return np.ascontiguousarray(np.concatenate(arrays).astype(dtype, copy=False))


def write_index(split_dir: Path, info: CacheInfo, shard_stems: list[str]) -> dict[str, Any]:
    """Write ``index.json`` once every part exists (call on one rank): the parts' records in order."""
    parts = []
    for stem in shard_stems:
        record = read_part_record(split_dir, stem)
        if record is None:
            raise CorruptCacheError(f"{split_dir / 'parts' / stem} has no readable {PART_RECORD}: {RERUN}")
        parts.append(record)
    index = {"info": asdict(info), "parts": parts}
    tmp = split_dir / f".{INDEX_NAME}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, split_dir / INDEX_NAME)
    fsync_dir(split_dir)
    return index


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
        index = read_json(path, RERUN)
        try:
            raw = index["info"]
            version = raw["format_version"]
        except (KeyError, TypeError) as err:
            raise DataFileError(f"{path} is not a token-cache index: {RERUN}") from err
        if version != TOKEN_FORMAT_VERSION:
            raise StaleCacheError(
                f"{self.dir} has token format {version}, this code reads {TOKEN_FORMAT_VERSION}: {RERUN}"
            )
        self.info = CacheInfo(**{**raw, "levels": tuple(raw["levels"]), "grid": tuple(raw["grid"])})
        self.records: list[dict[str, Any]] = index["parts"]
        self.parts = [p["name"] for p in self.records]
        counts = [p["clips"] for p in self.records]
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

    @property
    def missing(self) -> dict[str, dict[str, Any]]:
        """Incomplete parts as ``{shard stem: {"expected", "got", "problem"}}`` (empty when whole)."""
        return {
            p["name"]: {"expected": p["expected"], "got": p["clips"], "problem": p["problem"]}
            for p in self.records
            if not p["complete"]
        }

    def verify(self, checksums: bool = True) -> None:
        """Check every part's files against the sizes and sha256 written with them (CorruptCacheError)."""
        problems = [
            problem
            for record in self.records
            for problem in file_problems(self.dir / "parts" / record["name"], record["files"], checksums)
        ]
        if problems:
            listed = "\n  ".join(problems)
            raise CorruptCacheError(f"token cache {self.dir} is damaged:\n  {listed}\n{RERUN}")

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def num_frames(self) -> int:
        return int(sum(len(self._array(p, "codes")) for p in range(len(self.parts))))

    def _array(self, part: int, name: str) -> np.ndarray | None:
        """A part's array, memory-mapped; None for ground truth the cache does not hold."""
        key = (part, name)
        if key not in self._arrays:
            path = self.dir / "parts" / self.parts[part] / f"{name}.npy"
            if f"{name}.npy" not in self.records[part]["files"]:
                self._arrays[key] = None
            else:
                try:
                    self._arrays[key] = np.load(path, mmap_mode="r")
                except (OSError, ValueError) as err:
                    raise CorruptCacheError(f"cannot read {path} ({err}): {RERUN}") from err
        return self._arrays[key]

    def has(self, name: str) -> bool:
        """Whether the cache holds ground truth ``name`` ("actions", "positions") for its clips."""
        return bool(self.records) and f"{name}.npy" in self.records[0]["files"]

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
            keys.extend(read_json(self.dir / "parts" / name / "keys.json", RERUN))
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


def open_checked(
    split_dir: str | Path,
    tokenizer_id: str,
    manifest_hash: str,
    *,
    allow_partial: bool,
    opt_in: str,
    verify: bool = True,
) -> TokenCache:
    """The cache a trainer may use: made by this tokenizer from these shards (StaleCacheError), files
    matching their checksums when ``verify`` (CorruptCacheError), and complete unless ``allow_partial``
    (PartialDataError naming the parts and ``opt_in``, the config key that accepts the loss)."""
    cache = TokenCache(split_dir)
    cache.check(tokenizer_id, manifest_hash)
    if verify:
        cache.verify()
    require_complete(cache.missing, f"token cache {cache.dir}", opt_in, allow_partial)
    return cache
