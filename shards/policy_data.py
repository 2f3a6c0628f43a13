"""Policy-learning data beside the token cache: the policy's own view of every cached frame, and pseudo-
labels keyed to the model that made them (paper section 5.3).

Layout, inside one split of a token cache (``<out>/<dataset>/tokens/<tokenizer-id>/<split>/``):

    policy/obs.npy                         uint8 [F, 64, 64, 3]  the behaviour policy's view of frame row f
    policy/info.json                       written last: rows, manifest hash, format version
    labels/<labeller-id>/<name>/labels.npy int64 [F]  one action per frame row, -1 where there is none
    labels/<labeller-id>/<name>/info.json  written last: who labelled (world model or IDM checkpoint id),
                                           with what (decoder, label budget, seed), its held-out
                                           accuracy, and the cache it labelled (tokenizer id, manifest)

Frame rows follow the cache: clip i of the cache occupies rows [starts[i], starts[i] + lengths[i]) in
cache order (``frame_starts``), so obs, actions, pseudo-labels and codes of one frame share a row. A
labels folder is named by the labeller's checkpoint hash (like the cache by the tokenizer's), and
``PseudoLabels.check`` refuses labels made by another checkpoint or for another cache: stale labels
are never used silently.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from shards.format import META_KEY, obs_key
from shards.loader import list_shards
from shards.tar import read_samples
from shards.tokens import TokenCache
from shards.video import decode_video
from shards.writer import fsync_dir

POLICY_DATA_VERSION = 1
POLICY_DIR, LABELS_DIR, INFO_NAME = "policy", "labels", "info.json"
NO_LABEL = -1


class StaleLabelsError(RuntimeError):
    """Pseudo-labels made by another checkpoint, or for another token cache, than the ones asked for."""


def frame_starts(cache: TokenCache) -> np.ndarray:
    """First frame row of every clip of the cache, int64 [C]."""
    lengths = cache.clip_lengths()
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(lengths) else lengths


def cache_rows(cache: TokenCache, name: str) -> np.ndarray:
    """A cached per-frame array (e.g. "actions") of every clip, concatenated in row order: [F, ...]."""
    cache.require(name)
    return np.concatenate([np.asarray(cache.clip(i)[name]) for i in range(len(cache))])


def _cache_identity(cache: TokenCache) -> dict[str, Any]:
    return {
        "tokenizer_id": cache.info.tokenizer_id,
        "manifest_sha256": cache.info.manifest_sha256,
        "frames": int(cache.clip_lengths().sum()),
    }


@contextlib.contextmanager
def _staged(final: Path) -> Iterator[Path]:
    """A temporary folder the caller fills, renamed to ``final`` on success (removed on failure): a
    killed writer leaves nothing that looks complete. Write info.json last (``_finish``)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.*.tmp"):  # left by a killed writer
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _finish(folder: Path, arrays: dict[str, np.ndarray], info: dict[str, Any]) -> None:
    """Save ``arrays`` as .npy, then info.json, every file fsynced."""
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array, allow_pickle=False)
        _fsync(folder / f"{name}.npy")
    (folder / INFO_NAME).write_text(json.dumps(info, indent=1, sort_keys=True))
    _fsync(folder / INFO_NAME)


# ----------------------------------------------------------------------------- observations


def build_policy_obs(cache: TokenCache, dataset_dir: str | Path, progress: bool = True) -> Path:
    """Decode the policy's view (``obs.<ext>`` members, format version 2) of every cached clip of the split
    from its shards into ``<cache split>/policy/obs.npy``, in cache row order. Returns the folder."""
    out = cache.dir / POLICY_DIR
    if (out / INFO_NAME).exists():
        return out
    starts, lengths = frame_starts(cache), cache.clip_lengths()
    row_of = {key: (int(s), int(n)) for key, s, n in zip(cache.keys(), starts, lengths, strict=True)}
    found = 0
    shards = list_shards(dataset_dir, cache.info.split)
    bar = tqdm(total=len(row_of), desc=f"policy views {cache.info.split}", unit="clip", disable=not progress)
    with _staged(out) as tmp:
        obs: np.ndarray | None = None  # written straight to disk: 12 GB for 1M frames
        for raw in read_samples(shards):
            if raw.key not in row_of:
                continue  # a sample precompute skipped (corrupt): it has no cache row either
            meta = json.loads(raw.members[META_KEY])
            member = obs_key(meta["video_ext"])
            if not meta.get("has_obs") or member not in raw.members:
                raise ValueError(
                    f"{raw.shard}: clip {raw.key} holds no policy observations ({member}): behaviour "
                    "cloning needs Procgen shards of format version 2; re-ingest the dataset"
                )
            views = decode_video(raw.members[member])
            start, n = row_of[raw.key]
            if views.shape[0] != n:
                raise ValueError(f"{raw.shard}: clip {raw.key} has {views.shape[0]} views for {n} frames")
            if obs is None:
                shape = (int(lengths.sum()), *views.shape[1:])
                obs = np.lib.format.open_memmap(tmp / "obs.npy", mode="w+", dtype=np.uint8, shape=shape)
            obs[start : start + n] = views
            found += 1
            bar.update(1)
        bar.close()
        if found != len(row_of) or obs is None:
            raise ValueError(
                f"the shards of {dataset_dir} hold {found} of the {len(row_of)} clips of the token cache "
                f"{cache.dir}: the cache was made from other shards; rerun precompute"
            )
        obs.flush()
        _fsync(tmp / "obs.npy")
        _finish(tmp, {}, {"rows": len(obs), **_cache_identity(cache), "format_version": POLICY_DATA_VERSION})
    return out


def load_policy_obs(cache: TokenCache) -> np.ndarray:
    """The policy views of every frame row, uint8 [F, 64, 64, 3] (memory-mapped)."""
    folder = cache.dir / POLICY_DIR
    if not (folder / INFO_NAME).exists():
        raise FileNotFoundError(
            f"no policy views at {folder}: build them with shards.policy_data.build_policy_obs"
        )
    info = json.loads((folder / INFO_NAME).read_text())
    if info != {**info, **_cache_identity(cache)}:
        raise StaleLabelsError(f"{folder} was built for another token cache: delete it and rebuild")
    return np.load(folder / "obs.npy", mmap_mode="r")


# ----------------------------------------------------------------------------- pseudo-labels


@dataclass(frozen=True)
class LabelInfo:
    """Who made a set of pseudo-labels and how good they are."""

    labeller: str  # "world_model" (IDM latents + action decoder) | "idm" (supervised inverse dynamics)
    labeller_id: str  # content hash of the labeller's checkpoint (the world model's, or the IDM's)
    labeller_path: str
    name: str  # e.g. "budget1000-seed0"
    label_budget: int  # ground-truth labelled frames the decoder / IDM was trained on
    seed: int
    accuracy: float  # on held-out labelled frames (the val split)
    accuracy_frames: int
    labelled_rows: int  # rows of this split with a pseudo-label
    cache: dict[str, Any]
    extra: dict[str, Any]
    format_version: int = POLICY_DATA_VERSION


def labels_dir(cache: TokenCache, labeller_id: str, name: str) -> Path:
    return cache.dir / LABELS_DIR / labeller_id / name


def write_labels(cache: TokenCache, labels: np.ndarray, info: LabelInfo) -> Path:
    """Store pseudo-labels int64 [F] (NO_LABEL where none) for the cache's frame rows."""
    frames = int(cache.clip_lengths().sum())
    if labels.shape != (frames,):
        raise ValueError(f"labels must be one per frame row of {cache.dir} ({frames}), got {labels.shape}")
    if info.cache != _cache_identity(cache):
        raise ValueError("LabelInfo.cache must describe the cache the labels are for (use label_info)")
    out = labels_dir(cache, info.labeller_id, info.name)
    with _staged(out) as tmp:
        _finish(tmp, {"labels": labels.astype(np.int64)}, asdict(info))
    return out


def label_info(cache: TokenCache, **fields: Any) -> LabelInfo:
    """A LabelInfo for labels of ``cache`` (its identity filled in)."""
    return LabelInfo(cache=_cache_identity(cache), **fields)


class PseudoLabels:
    """Stored pseudo-labels; ``check`` refuses them for another labeller or another cache."""

    def __init__(self, folder: str | Path) -> None:
        self.dir = Path(folder)
        if not (self.dir / INFO_NAME).exists():
            raise FileNotFoundError(
                f"no pseudo-labels at {self.dir}: run the labelling stage (make policy) first"
            )
        raw = json.loads((self.dir / INFO_NAME).read_text())
        if raw.get("format_version") != POLICY_DATA_VERSION:
            raise StaleLabelsError(f"{self.dir} has labels format {raw.get('format_version')}: relabel")
        self.info = LabelInfo(**raw)
        self.labels = np.load(self.dir / "labels.npy")

    def check(self, labeller_id: str, cache: TokenCache) -> None:
        if labeller_id != self.info.labeller_id:
            raise StaleLabelsError(
                f"pseudo-labels {self.dir} were made by {self.info.labeller} {self.info.labeller_id} "
                f"({self.info.labeller_path}), this run uses {labeller_id}: the model was retrained since; "
                "relabel with it (rerun make policy) or use the checkpoint that made them"
            )
        if _cache_identity(cache) != self.info.cache:
            raise StaleLabelsError(
                f"pseudo-labels {self.dir} were made for another token cache than {cache.dir} (the dataset "
                "was re-ingested or re-encoded since): delete them and relabel"
            )
