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
# A FLAM small enough to train a few steps on CPU in seconds (overrides of configs/demo.yaml).
TINY_LAM = [
    "lam.dim=32",
    "lam.num_heads=2",
    "lam.depth=1",
    "lam.num_slots=4",
    "lam.slot_iters=2",
    "lam_train.batch_size=4",
    "lam_train.window=4",
    "lam.max_frames=4",
    "lam_train.window_stride=4",
    "lam_train.log_every=2",
    "lam_train.val_every=1000",
    "lam_train.val_clips=2",
    "lam_train.rollout_steps=3",
    "lam_train.warmup_steps=2",
    "lam_train.lr=1e-3",
]


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


def save_tokenizer(
    run_dir: Path, cfg: TokenizerConfig = TINY_TOKENIZER, seed: int = 0, encoder_gain: float = 1.0
) -> Path:
    """A randomly initialised tokenizer checkpoint, in the format train/tokenizer.py writes.
    ``encoder_gain`` scales the encoder's last layer: at init its outputs sit near 0 and most frames get
    the same codes; a gain of 10 spreads them so that distinct agent poses get distinct codes."""
    torch.manual_seed(seed)
    model = Tokenizer(cfg)
    with torch.no_grad():
        model.encoder.net[-1].weight.mul_(encoder_gain)
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


WALKER_MOVES = torch.tensor([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]])  # stay, up, down, left, right


def random_walkers(
    num_clips: int, t: int = 4, grid: int = 5, entities: int = 3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Single-token "sprites" (distinct FSQ vectors) on a uniform background of a grid x grid token map, each
    taking a fresh uniformly random move of ``WALKER_MOVES`` every step (wrapping around): the next frame is
    unpredictable without every entity's own action. Returns features [clips, t, grid^2, 5], actions int
    [clips, t, entities] (actions[:, s] moves frame s to s+1) and positions int [clips, t, entities, 2] (row,
    col)."""
    gen = torch.Generator().manual_seed(seed)
    sprite = torch.tensor([0.5, -1.0, 0.5, -1.0, 0.5])  # entity e: this vector rolled by e
    features = torch.full((num_clips, t, grid * grid, 5), -0.5)
    actions = torch.randint(0, len(WALKER_MOVES), (num_clips, t, entities), generator=gen)
    positions = torch.zeros(num_clips, t, entities, 2, dtype=torch.long)
    for c in range(num_clips):
        cells = torch.randperm(grid * grid, generator=gen)[:entities]
        pos = torch.stack([cells // grid, cells % grid], -1)
        for s in range(t):
            positions[c, s] = pos
            for e in range(entities):
                features[c, s, pos[e, 0] * grid + pos[e, 1]] = sprite.roll(e)
            pos = (pos + WALKER_MOVES[actions[c, s]]) % grid
    return features, actions, positions


def precompute_config(root: Path, *overrides: str):
    """configs/demo.yaml for precompute on ``root``: one process, no workers, a small Recon report."""
    from train.config import load_config

    base = [f"data.root={root}", "data.num_workers=0", "precompute.batch_clips=8"]
    base.append("precompute.report_clips=4")
    return load_config(Path(__file__).resolve().parents[1] / "configs/demo.yaml", [*base, *overrides])


def copy_dataset(root: Path, dest: Path) -> Path:
    """A copy of ``root``'s shards and manifest (no token cache) under ``dest``; returns ``dest``."""
    import shutil

    shutil.copytree(root / "multigrid", dest / "multigrid", ignore=shutil.ignore_patterns("tokens", ".lock"))
    return dest


def tree_bytes(folder: Path, skip: tuple[str, ...] = (".lock",)) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes), for byte-for-byte comparisons."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip
    }


# The CPU-size MultiGrid look (configs/brief.yaml): 64x64 frames, 8-pixel cells, plain floor; 8x8 tokens.
SMALL_ROOM = {"episode_len": 16, "tile_size": 8, "highlight": False}
SMALL_TOKENIZER = TokenizerConfig(image_size=64, channels=(8, 8, 8), num_res_blocks=1)
SMALL_LAM = [
    *(o for o in TINY_LAM if not o.startswith("lam_train.val")),
    "lam.num_tokens=64",
    "lam.vq_codes=16",
]


def small_world(root: Path, models: tuple[str, ...], steps: int = 2) -> tuple[Path, dict[str, Path]]:
    """A 64x64 MultiGrid set (24 episodes of 16 frames), a random tokenizer for it, the token cache of
    every split and ``steps``-step runs of ``models`` -> (tokenizer checkpoint, {model: run folder})."""
    from train import lam as train_lam
    from train import precompute

    cfg = build_config(
        "multigrid", {"episodes": 24, "clip_len": 8, "episodes_per_shard": 12, "source": SMALL_ROOM}
    )
    run_ingest(cfg, RunOptions(out=str(root), executor="local", progress=False))
    ckpt = save_tokenizer(root / "tok", SMALL_TOKENIZER, encoder_gain=10.0)
    precompute.main(precompute_config(root, "tokenizer.image_size=64"), ckpt)
    runs = {}
    for model in models:
        run = root / "runs" / model
        args = [*SMALL_LAM, f"model={model}", f"data.root={root}", f"lam_train.tokenizer={ckpt}"]
        args += [f"lam_train.run_dir={run}", f"lam_train.steps={steps}", f"lam_train.ckpt_every={steps}"]
        args += ["lam_train.val_every=1000", "lam.slot_pretrain_steps=1"]
        train_lam.main(precompute_config(root, "tokenizer.image_size=64", *args))
        runs[model] = run
    return ckpt, runs
