"""The work block: render a block of episodes, cut clips, assign splits, write shards atomically.

This is the unit the Ray pipeline schedules (one task per block) and the unit of resume: a block is
done when its record exists under ``.progress/``. Everything here is plain Python, tested without Ray.

Determinism: episode seeds, split assignment and clip order derive from (config, block index) only,
and encoders and tar headers are deterministic, so the same config gives byte-identical shards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ingest.config import IngestConfig
from ingest.episode import Episode
from ingest.splits import assign_splits
from shards.format import (
    ACTIONS_KEY,
    DONES_KEY,
    META_KEY,
    POSITIONS_KEY,
    REWARDS_KEY,
    SPLITS,
    ClipMeta,
    npy_bytes,
    obs_key,
    sample_key,
    shard_name,
)
from shards.manifest import BlockRecord, EpisodeRecord, ShardRecord, SkipRecord, write_block_record
from shards.video import encode_frames, get_codec
from shards.writer import ShardWriter


@dataclass
class Unit:
    """What one unit index (an episode; a log for nuPlan) produced: segments to cut clips from, and
    whatever was skipped on the way. A unit's segments all go to one split.

    ``segments`` may be a one-shot iterator that decodes lazily (a nuPlan log can hold ~10k frames, more
    than a worker should hold at once); ``skips`` may then grow while it is consumed, and is read after.
    A skip whose ``what`` is the unit's ``name`` says why the whole unit gave nothing.
    """

    segments: Iterable[Episode] = field(default_factory=list)
    skips: list[SkipRecord] = field(default_factory=list)
    name: str = ""  # how skips and meta refer to the unit
    episode_return: float | None = (
        None  # summed over the segments' rewards by encode_unit, when they have any
    )


def episode_seed(seed: int, index: int) -> int:
    """Seed of episode ``index``: independent streams per episode, stable across runs and machines."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0] & 0x7FFFFFFF)


def _load_multigrid(cfg: IngestConfig, index: int) -> Unit:
    from ingest.multigrid import render_episode

    return Unit([render_episode(cfg.source, episode_seed(cfg.seed, index))], name=f"episode {index}")


def _load_procgen(cfg: IngestConfig, index: int) -> Unit:
    from ingest.procgen import render_episode

    return Unit([render_episode(cfg.source, episode_seed(cfg.seed, index))], name=f"episode {index}")


def _load_nuplan(cfg: IngestConfig, index: int) -> Unit:
    from ingest.nuplan import open_log

    log = open_log(cfg.source, index, cfg.clip_len)  # reads the DB now, the JPEGs segment by segment
    return Unit(log.segments(), log.skips, name=log.unit_name)


UNIT_LOADERS: dict[str, Callable[[IngestConfig, int], Unit]] = {
    "multigrid": _load_multigrid,
    "procgen": _load_procgen,
    "nuplan": _load_nuplan,
}


def block_units(cfg: IngestConfig, block: int) -> range:
    """Unit indices of ``block``."""
    start = block * cfg.episodes_per_shard
    return range(start, min(start + cfg.episodes_per_shard, cfg.episodes))


@dataclass
class EncodedClip:
    key: str
    members: dict[str, bytes]  # everything but the meta, which waits for the split
    meta: ClipMeta
    num_frames: int

    def sample(self, split: str) -> dict[str, bytes]:
        return {**self.members, META_KEY: replace(self.meta, split=split).to_json()}


def encode_unit(cfg: IngestConfig, index: int, unit: Unit) -> tuple[list[EncodedClip], int]:
    """Cut every segment into non-overlapping clips of ``clip_len`` and encode them.

    Returns the clips (meta split left as "" until assignment) and the count of tail frames dropped;
    sets ``unit.episode_return`` (every frame's reward, dropped tails included) when segments have rewards.
    """
    codec = get_codec(cfg.codec)
    clips, dropped, clip_no = [], 0, 0
    # Number the segments in the meta when there are several; lazy sources (no len) number their own.
    several = isinstance(unit.segments, Sized) and len(unit.segments) > 1
    for seg_no, seg in enumerate(unit.segments):
        n = seg.num_frames // cfg.clip_len
        dropped += seg.num_frames - n * cfg.clip_len
        if seg.rewards is not None:
            unit.episode_return = (unit.episode_return or 0.0) + float(np.sum(seg.rewards, dtype=np.float64))
        for c in range(n):
            lo, hi = c * cfg.clip_len, (c + 1) * cfg.clip_len
            frames = seg.frames[lo:hi]
            members = {codec.ext: encode_frames(frames, cfg.codec, fps=seg.fps, crf=cfg.crf)}
            if seg.actions is not None:
                members[ACTIONS_KEY] = npy_bytes(seg.actions[lo:hi].astype(np.int64))
            if seg.positions is not None:
                members[POSITIONS_KEY] = npy_bytes(seg.positions[lo:hi].astype(np.int64))
            if seg.rewards is not None:
                members[REWARDS_KEY] = npy_bytes(seg.rewards[lo:hi].astype(np.float32))
                members[DONES_KEY] = npy_bytes(seg.dones[lo:hi].astype(bool))
            if seg.obs is not None:  # same codec as the frames: lossless stays lossless
                members[obs_key(codec.ext)] = encode_frames(
                    seg.obs[lo:hi], cfg.codec, fps=seg.fps, crf=cfg.crf
                )
            info = dict(seg.info)
            info.update({k: list(v[lo:hi]) for k, v in seg.frame_info.items()})
            if several:
                info["segment"] = seg_no
            meta = ClipMeta(
                dataset=cfg.dataset,
                source=cfg.source_kind,
                split="",
                episode=index,
                clip=clip_no,
                start_frame=lo,
                num_frames=cfg.clip_len,
                height=int(frames.shape[1]),
                width=int(frames.shape[2]),
                fps=float(seg.fps),
                codec=cfg.codec,
                lossless=codec.lossless,
                video_ext=codec.ext,
                has_actions=seg.actions is not None,
                has_positions=seg.positions is not None,
                has_rewards=seg.rewards is not None,
                has_obs=seg.obs is not None,
                info=info,
            )
            clips.append(EncodedClip(sample_key(cfg.dataset, index, clip_no), members, meta, cfg.clip_len))
            clip_no += 1
    return clips, dropped


def run_block(
    cfg: IngestConfig, block: int, dataset_dir: str | Path, on_unit: Callable[[int, int], Any] | None = None
) -> BlockRecord:
    """Render, encode and write block ``block``; record it as done. Returns the block record.

    ``on_unit(episodes, frames)`` is called after each unit (for progress reporting in-process).
    """
    dataset_dir = Path(dataset_dir)
    load = UNIT_LOADERS[cfg.source_kind]
    record = BlockRecord(block=block)
    encoded: list[tuple[int, list[EncodedClip], float | None]] = []
    for index in block_units(cfg, block):
        unit = load(cfg, index)
        clips, dropped = encode_unit(cfg, index, unit)
        record.skips.extend(unit.skips)  # after encoding: a lazy unit records skips while it decodes
        record.dropped_tail_frames += dropped
        frames = sum(c.num_frames for c in clips) + dropped  # = all segments' frames, without re-reading
        name = unit.name or f"episode {index}"
        if not clips and not any(s.what == name for s in unit.skips):  # else the unit said why already
            record.skips.append(
                SkipRecord(name, f"shorter than one clip: {frames} frames < clip_len {cfg.clip_len}", frames)
            )
        if not clips:
            record.episodes.append(EpisodeRecord(index, None, 0, 0))
        else:
            encoded.append((index, clips, unit.episode_return))
        if on_unit is not None:
            on_unit(1, frames)

    if cfg.unit_splits:
        splits = [cfg.unit_splits[index] for index, _, _ in encoded]
    else:
        splits = assign_splits([sum(c.num_frames for c in clips) for _, clips, _ in encoded], cfg.seed, block)
    for (index, clips, ret), split in zip(encoded, splits, strict=True):
        record.episodes.append(EpisodeRecord(index, split, sum(c.num_frames for c in clips), len(clips), ret))
    record.episodes.sort(key=lambda e: e.episode)

    for split in SPLITS:
        members = [
            (clip, split)
            for (_, clips, _), s in zip(encoded, splits, strict=True)
            if s == split
            for clip in clips
        ]
        if not members:
            continue
        rel = f"{split}/{shard_name(cfg.dataset, split, block)}"
        with ShardWriter(dataset_dir / rel) as writer:
            for clip, s in members:
                writer.write(clip.key, clip.sample(s))
        written = writer.result
        record.shards.append(
            ShardRecord(
                split,
                rel,
                written.num_samples,
                sum(c.num_frames for c, _ in members),
                written.sha256,
                written.size_bytes,
                block,
            )
        )
    write_block_record(dataset_dir, record)
    return record
