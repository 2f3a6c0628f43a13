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
