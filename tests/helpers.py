"""Small builders shared by the training-side tests: a MultiGrid shard set and a tokenizer checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import torch

from ingest.config import RunOptions, build_config
from ingest.pipeline import run_ingest
from model.tokenizer import Tokenizer, TokenizerConfig
from shards.config import to_dict
from train.common import Checkpoints

TINY_TOKENIZER = TokenizerConfig(channels=(8, 8, 8), num_res_blocks=1)


def ingest_multigrid(out: Path, episodes: int = 20, episode_len: int = 16, clip_len: int = 8) -> Path:
    cfg = build_config(
        "multigrid",
        {
            "episodes": episodes,
            "clip_len": clip_len,
            "episodes_per_shard": 10,
            "source": {"episode_len": episode_len},
        },
    )
    run_ingest(cfg, RunOptions(out=str(out), executor="local", progress=False))
    return out / "multigrid"


def save_tokenizer(run_dir: Path, cfg: TokenizerConfig = TINY_TOKENIZER, seed: int = 0) -> Path:
    """A randomly initialised tokenizer checkpoint, in the format train/tokenizer.py writes."""
    torch.manual_seed(seed)
    model = Tokenizer(cfg)
    ckpts = Checkpoints(run_dir)
    ckpts.save(
        {
            "model": model.state_dict(),
            "tokenizer_config": to_dict(cfg),
            "kind": "tokenizer",
            "config": {},
            "step": 0,
        }
    )
    return ckpts.latest


def shard_members(path: Path) -> dict[str, bytes]:
    """Every member of a shard tar by file name (plain tarfile: no project code in the way)."""
    import tarfile

    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def kill_run(proc: subprocess.Popen, marker: str) -> None:
    """SIGKILL a torchrun launch and every worker it started: its process group, plus any process whose
    command line names ``marker`` (torchrun's workers may sit in sessions of their own, and an orphaned
    rank 0 would go on writing checkpoints)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0:
        subprocess.run(["pkill", "-KILL", "-f", marker], capture_output=True)
        if time.time() > deadline:
            raise RuntimeError(f"processes running {marker} survived SIGKILL")
        time.sleep(0.1)


def moving_objects(
    num_clips: int = 8, t: int = 6, grid: int = 4, seed: int = 0, with_velocities: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Two single-token "sprites" (distinct FSQ vectors) on a zero background, each moving with its own
    constant velocity in {-1, 0, 1}^2 (wrapping around) on a grid x grid token map: [clips, t, grid^2, 5].
    ``with_velocities``: also each sprite's velocity as an action in [0, 9), int [clips, t, 2]."""
    gen = torch.Generator().manual_seed(seed)
    sprites = torch.tensor([[-1.0, 0.5, -1.0, 0.5, -1.0], [0.5, -1.0, 0.5, -1.0, 0.5]])
    out = torch.zeros(num_clips, t, grid * grid, 5)
    velocities = torch.zeros(num_clips, t, 2, dtype=torch.long)
    steps = torch.arange(t)[:, None]
    for c in range(num_clips):
        for i, sprite in enumerate(sprites):
            pos, vel = torch.randint(0, grid, (2,), generator=gen), torch.randint(-1, 2, (2,), generator=gen)
            yx = (pos + steps * vel) % grid  # [t, 2]
            out[c, torch.arange(t), yx[:, 0] * grid + yx[:, 1]] = sprite
            velocities[c, :, i] = (vel[0] + 1) * 3 + (vel[1] + 1)
    return (out, velocities) if with_velocities else out
