"""A small clip-shard dataset made without a simulator or Ray, for benchmarks on machines that have torch and
PyAV but neither the simulators nor Ray (the lent GPU machines, see bench/gpu.py).

Frames look like MultiGrid's plain-floor rooms: a grid of grey floor tiles with darker grout, and A coloured
agents (a square with a dark centre) that each take a random move every step (stay, up, down, left, right;
they wrap around the edges). Clips are written in the ingest format (``shards/format.py``): lossless mp4
(``shards.video.encode_frames``, PyAV), per-step actions [T, A] and positions [T, A, 2], a clip meta, shards
written atomically by ``shards.writer.ShardWriter`` and a manifest built from block records
(``shards.manifest``), so the loader, precompute and training read them as they read ingested data.

    manifest = write_dataset(Path("data/bench"), episodes=96, episode_len=64, clip_len=16, image_size=128)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shards.format import (
    ACTIONS_KEY,
    META_KEY,
    POSITIONS_KEY,
    SPLITS,
    ClipMeta,
    npy_bytes,
    sample_key,
    shard_name,
)
from shards.manifest import BlockRecord, EpisodeRecord, ShardRecord, build_manifest, write_manifest
from shards.writer import ShardWriter

MOVES = np.array([[0, 0], [0, -1], [0, 1], [-1, 0], [1, 0]])  # (dx, dy): stay, up, down, left, right
COLOURS = np.array(
    [[230, 50, 50], [50, 200, 70], [60, 90, 230], [230, 200, 40], [200, 60, 220], [40, 210, 210]], np.uint8
)
CODEC = "libx264rgb"


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes of the synthetic set. image_size = grid * tile."""

    episodes: int = 96
    episode_len: int = 64
    clip_len: int = 16
    image_size: int = 128
    grid: int = 16  # cells per side
    agents: int = 4
    episodes_per_shard: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.image_size % self.grid:
            raise ValueError(f"image_size {self.image_size} must be a multiple of grid {self.grid}")
        if self.episode_len < self.clip_len or self.agents > len(COLOURS):
            raise ValueError(
                f"need episode_len >= clip_len and at most {len(COLOURS)} agents, got {self.episode_len}, "
                f"{self.clip_len}, {self.agents}"
            )


def render_episode(cfg: SyntheticConfig, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One episode -> (frames uint8 [T, H, W, 3], actions int64 [T, A] in [0, 5), positions int64 [T, A, 2]
    (x, y) cells). actions[t] moves the agents from frame t to frame t + 1."""
    rng = np.random.default_rng(seed)
    t, a, g = cfg.episode_len, cfg.agents, cfg.grid
    tile = cfg.image_size // g
    actions = rng.integers(0, len(MOVES), (t, a))
    start = rng.choice(g * g, a, replace=False)
    pos = np.stack([start % g, start // g], -1)  # [A, 2] (x, y)
    positions = np.empty((t, a, 2), np.int64)
    for s in range(t):
        positions[s] = pos
        pos = (pos + MOVES[actions[s]]) % g
    floor = np.full((tile, tile, 3), 96, np.uint8)
    floor[0, :], floor[:, 0] = 64, 64  # grout on the top and left edge of every tile
    frames = np.tile(floor, (t, g, g, 1))  # [T, H, W, 3]
    agent = np.empty((a, tile, tile, 3), np.uint8)
    agent[:] = COLOURS[:a, None, None]
    q = max(1, tile // 4)
    agent[:, q:-q, q:-q] //= 2  # a dark centre
    for s in range(t):
        for i, (x, y) in enumerate(positions[s]):
            frames[s, y * tile : (y + 1) * tile, x * tile : (x + 1) * tile] = agent[i]
    return frames, actions.astype(np.int64), positions


def split_of(episode: int) -> str:
    """Episodes 0..9 of every ten: 8 train, 1 val, 1 test (the ingest's 80/10/10, by episode)."""
    return SPLITS[0] if episode % 10 < 8 else SPLITS[1] if episode % 10 == 8 else SPLITS[2]


def write_dataset(out: Path, cfg: SyntheticConfig, dataset: str = "multigrid") -> dict[str, Any]:
    """Render and write ``cfg.episodes`` episodes as clip shards under ``out/<dataset>/``; returns the
    manifest. One shard per (split, block of ``episodes_per_shard`` episodes)."""
    from shards.video import encode_frames  # PyAV: imported where it is needed

    dataset_dir = Path(out) / dataset
    records = []
    for block, first in enumerate(range(0, cfg.episodes, cfg.episodes_per_shard)):
        record = BlockRecord(block=block)
        samples: dict[str, list[tuple[str, dict[str, bytes]]]] = {s: [] for s in SPLITS}
        for episode in range(first, min(first + cfg.episodes_per_shard, cfg.episodes)):
            split = split_of(episode)
            frames, actions, positions = render_episode(cfg, cfg.seed * 1_000_003 + episode)
            clips = cfg.episode_len // cfg.clip_len
            for c in range(clips):
                lo, hi = c * cfg.clip_len, (c + 1) * cfg.clip_len
                meta = ClipMeta(
                    dataset=dataset,
                    source="synthetic",
                    split=split,
                    episode=episode,
                    clip=c,
                    start_frame=lo,
                    num_frames=cfg.clip_len,
                    height=cfg.image_size,
                    width=cfg.image_size,
                    fps=15.0,
                    codec=CODEC,
                    lossless=True,
                    video_ext="mp4",
                    has_actions=True,
                    has_positions=True,
                )
                members = {
                    "mp4": encode_frames(frames[lo:hi], CODEC),
                    ACTIONS_KEY: npy_bytes(actions[lo:hi]),
                    POSITIONS_KEY: npy_bytes(positions[lo:hi]),
                    META_KEY: meta.to_json(),
                }
                samples[split].append((sample_key(dataset, episode, c), members))
            record.episodes.append(EpisodeRecord(episode, split, clips * cfg.clip_len, clips))
        for split, members in samples.items():
            if not members:
                continue
            rel = f"{split}/{shard_name(dataset, split, block)}"
            with ShardWriter(dataset_dir / rel) as writer:
                for key, sample in members:
                    writer.write(key, sample)
            written = writer.result
            frames_in = len(members) * cfg.clip_len
            record.shards.append(
                ShardRecord(
                    split, rel, written.num_samples, frames_in, written.sha256, written.size_bytes, block
                )
            )
        records.append(record)
    manifest = build_manifest(dataset, {"synthetic": asdict(cfg)}, records)
    write_manifest(dataset_dir, manifest)
    return manifest
