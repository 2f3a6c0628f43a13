"""The dataset manifest: what was asked for, what was written, and what was skipped and why.

Layout under ``<out>/<dataset>/``:
    manifest.json             written last, atomically, once every block is done
    ingest_config.json        the resolved config, written when a run starts (a rerun must match it)
    .progress/block-NNNNNN.json   one record per finished work block (the resume log)
    <split>/<dataset>-<split>-NNNNNN.tar

A block record is written only after its shards are renamed into place, so "record exists" means
"block complete"; the manifest is derived from the block records and never edited by hand.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shards.files import DataFileError, read_json
from shards.format import FORMAT_VERSION, SPLITS, check_readable
from shards.writer import atomic_write_bytes

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
CONFIG_NAME = "ingest_config.json"
PROGRESS_DIR = ".progress"


@dataclass(frozen=True)
class ShardRecord:
    split: str
    path: str  # relative to the dataset folder: "<split>/<name>.tar"
    num_samples: int
    num_frames: int
    sha256: str
    size_bytes: int
    block: int


@dataclass(frozen=True)
class EpisodeRecord:
    episode: int  # unit index: episode for simulators, log for nuPlan
    split: str | None  # None when skipped
    num_frames: int  # frames that landed in clips
    num_clips: int
    episode_return: float | None = None  # sum of the episode's rewards, where the source has rewards


@dataclass(frozen=True)
class SkipRecord:
    what: str  # "episode 12", "log 2021.06.09.17.23.18_veh-38_00773_01090", "frame <token>"
    reason: str
    frames: int = 0  # frames lost to this skip, where known


@dataclass
class BlockRecord:
    block: int
    episodes: list[EpisodeRecord] = field(default_factory=list)
    shards: list[ShardRecord] = field(default_factory=list)
    skips: list[SkipRecord] = field(default_factory=list)
    dropped_tail_frames: int = 0  # episode tails shorter than one clip

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> BlockRecord:
        raw = json.loads(data)
        return cls(
            block=raw["block"],
            episodes=[EpisodeRecord(**e) for e in raw["episodes"]],
            shards=[ShardRecord(**s) for s in raw["shards"]],
            skips=[SkipRecord(**s) for s in raw["skips"]],
            dropped_tail_frames=raw.get("dropped_tail_frames", 0),
        )


def block_record_path(dataset_dir: Path, block: int) -> Path:
    return Path(dataset_dir) / PROGRESS_DIR / f"block-{block:06d}.json"


def write_block_record(dataset_dir: Path, record: BlockRecord) -> None:
    path = block_record_path(dataset_dir, record.block)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, record.to_json())


def read_block_records(dataset_dir: Path) -> dict[int, BlockRecord]:
    """The finished blocks' records. An unreadable record (a damaged file) is left out with a warning, so
    its block counts as not done and is redone: blocks are deterministic, redoing one is always safe."""
    folder = Path(dataset_dir) / PROGRESS_DIR
    records = {}
    for path in sorted(folder.glob("block-*.json")):
        try:
            record = BlockRecord.from_json(path.read_bytes())
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
            log.warning("ingest: progress record %s is unreadable (%s); its block will be redone", path, err)
            continue
        records[record.block] = record
    return records


def build_manifest(dataset: str, config: dict[str, Any], records: list[BlockRecord]) -> dict[str, Any]:
    """Assemble the manifest dict from block records (sorted by block, so it is deterministic)."""
    records = sorted(records, key=lambda r: r.block)
    splits = {s: {"episodes": 0, "clips": 0, "frames": 0, "shards": 0} for s in SPLITS}
    returns: dict[str, list[float]] = {s: [] for s in SPLITS}
    shards, skips, episodes_skipped, dropped = [], [], 0, 0
    for record in records:
        for ep in record.episodes:
            if ep.split is None:
                episodes_skipped += 1
                continue
            splits[ep.split]["episodes"] += 1
            splits[ep.split]["clips"] += ep.num_clips
            splits[ep.split]["frames"] += ep.num_frames
            if ep.episode_return is not None:
                returns[ep.split].append(ep.episode_return)
        for shard in record.shards:
            splits[shard.split]["shards"] += 1
            shards.append(asdict(shard))
        skips.extend(asdict(s) for s in record.skips)
        dropped += record.dropped_tail_frames
    total_frames = sum(s["frames"] for s in splits.values())
    for name, s in splits.items():
        s["frame_fraction"] = round(s["frames"] / total_frames, 4) if total_frames else 0.0
        if returns[name]:  # sources with rewards: what the behaviour policy scored (whole episodes)
            s["mean_return"] = round(float(sum(returns[name]) / len(returns[name])), 4)
    return {
        "format_version": FORMAT_VERSION,
        "dataset": dataset,
        "config": config,
        "splits": splits,
        "totals": {
            "episodes": sum(s["episodes"] for s in splits.values()),
            "episodes_skipped": episodes_skipped,
            "clips": sum(s["clips"] for s in splits.values()),
            "frames": total_frames,
            "dropped_tail_frames": dropped,
            "shards": len(shards),
        },
        "shards": shards,
        "skips": skips,
    }


def write_manifest(dataset_dir: Path, manifest: dict[str, Any]) -> Path:
    path = Path(dataset_dir) / MANIFEST_NAME
    atomic_write_bytes(path, json.dumps(manifest, sort_keys=True, indent=1).encode())
    return path


def load_manifest(dataset_dir: str | Path) -> dict[str, Any]:
    """Read ``<dataset_dir>/manifest.json``, with a clear error when the ingest has not finished."""
    path = Path(dataset_dir) / MANIFEST_NAME
    if not path.exists():
        hint = (
            " (an ingest was started here but has not finished: rerun it)"
            if (Path(dataset_dir) / CONFIG_NAME).exists()
            else ""
        )
        raise FileNotFoundError(f"no manifest at {path}{hint}; run `make ingest DATASET=...` first")
    manifest = read_json(path, "rerun the same `make ingest` command: it rebuilds the manifest")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise DataFileError(f"{path} is not a manifest of this project; rerun the same `make ingest` command")
    check_readable(manifest.get("format_version"), str(path))
    return manifest


def shard_paths(dataset_dir: str | Path, split: str) -> list[Path]:
    """Absolute paths of a split's shards, in manifest order."""
    manifest = load_manifest(dataset_dir)
    return [Path(dataset_dir) / s["path"] for s in manifest["shards"] if s["split"] == split]
