"""Small builders shared by the tests, sized from configs/demo.yaml (MultiGrid at the CPU size of
configs/brief.yaml: 64x64 frames, 8x8 tokens): a shard set, a tokenizer checkpoint, training configs, and
the process helpers of the kill tests."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import time
from pathlib import Path

import torch

from model.tokenizer import Tokenizer, TokenizerConfig
from shards.config import to_dict
from train.common import Checkpoints
from train.config import load_config

REPO = Path(__file__).resolve().parents[1]
DEMO = load_config(REPO / "configs/demo.yaml")
# The demo's tokenizer, narrower: a random one encodes a 16-frame clip in milliseconds.
TINY_TOKENIZER = dataclasses.replace(DEMO.tokenizer, channels=(8, 8, 8))
# A FLAM small enough to train a few steps on CPU in seconds (overrides of configs/demo.yaml). Latents
# are sampled from step 0 (no warm-up), so every run exercises the noise of the global batch.
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
    "lam_train.latent_warmup_steps=0",
]


def multigrid_ingest(episodes: int = 20, episode_len: int = 16, clip_len: int = 8) -> dict:
    """Ingest overrides: ``episodes`` MultiGrid episodes as the demo renders them (``ingest.source`` of
    configs/demo.yaml), ``episode_len`` frames each in clips of ``clip_len``, 10 episodes per shard."""
    source = {**DEMO.ingest["source"], "episode_len": episode_len}
    return {"episodes": episodes, "clip_len": clip_len, "episodes_per_shard": 10, "source": source}


def ingest_multigrid(out: Path, episodes: int = 20, episode_len: int = 16, clip_len: int = 8) -> Path:
    """``multigrid_ingest`` rendered into ``out/multigrid/`` (in process, no Ray)."""
    # Imported here: the simulator is only needed by the tests that ingest (bench/gpu.py imports this
    # module on machines without it).
    from ingest.config import RunOptions, build_config
    from ingest.pipeline import run_ingest

    cfg = build_config("multigrid", multigrid_ingest(episodes, episode_len, clip_len))
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


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids of every process, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # the name may hold spaces: after ")"
        except (OSError, IndexError, ValueError):  # the process ended while we read
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    return children


def process_tree(pid: int) -> set[int]:
    """``pid`` and every process below it."""
    children, tree, todo = _children(), {pid}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in tree:
                tree.add(child)
                todo.append(child)
    return tree


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # zombie: dead
    except (OSError, IndexError):
        return False


def _signal(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.kill(pid, sig)


def kill_run(proc: subprocess.Popen) -> None:
    """SIGKILL a launched job and every process it started, by their ids: torchrun's workers sit in
    sessions of their own, and an orphaned rank 0 would go on writing checkpoints. The tree is stopped
    first (SIGSTOP), so nothing forks or is orphaned while it is collected; then every pid is killed."""
    tree: set[int] = set()
    while True:  # stop what we know, look again: done when stopping found nothing new
        found = process_tree(proc.pid) if _alive(proc.pid) else {proc.pid}
        new = (found | tree) - tree
        if not new:
            break
        _signal(new, signal.SIGSTOP)
        tree |= new
    _signal(tree, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while any(_alive(pid) for pid in tree - {proc.pid}):
        if time.time() > deadline:
            raise RuntimeError(f"processes {sorted(p for p in tree if _alive(p))} survived SIGKILL")
        time.sleep(0.05)


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


def precompute_config(root: Path, tokenizer: Path, *overrides: str):
    """configs/demo.yaml for precompute on ``root`` with ``tokenizer``: one process, no workers, a small
    Recon report."""
    base = [
        f"data.root={root}",
        f"data.tokenizer={tokenizer}",
        "data.num_workers=0",
        "precompute.batch_clips=8",
    ]
    base.append("precompute.report_clips=4")
    return load_config(REPO / "configs/demo.yaml", [*base, *overrides])


def lam_config(root: Path, tokenizer: Path, run_dir: Path, *overrides: str):
    """configs/demo.yaml at ``TINY_LAM`` size, training on ``root``'s token cache of ``tokenizer`` into
    ``run_dir``."""
    base = [*TINY_LAM, f"data.root={root}", f"data.tokenizer={tokenizer}", f"lam_train.run_dir={run_dir}"]
    return load_config(REPO / "configs/demo.yaml", [*base, *overrides])


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


# Worlds for the controller and planning tests: the demo's (= brief) MultiGrid look and sizes, and a tiny
# random IMPALA tokenizer with its encoder's last layer scaled so that distinct agent poses get distinct
# codes (the planners' costs compare codes; a random patch tokenizer gives most cells the same code).
SMALL_TOKENIZER = TokenizerConfig(image_size=64, channels=(8, 8, 8), num_res_blocks=1)
SMALL_LAM = ["lam.vq_codes=16", "lam.slot_pretrain_steps=1"]


def small_world(root: Path, models: tuple[str, ...], steps: int = 2) -> tuple[Path, dict[str, Path]]:
    """A 64x64 MultiGrid set (24 episodes of 16 frames), a random tokenizer for it, the token cache of
    every split and ``steps``-step runs of ``models`` -> (tokenizer checkpoint, {model: run folder})."""
    from ingest.config import RunOptions, build_config
    from ingest.pipeline import run_ingest
    from train import lam as train_lam
    from train import precompute

    cfg = build_config("multigrid", {**multigrid_ingest(24, 16, 8), "episodes_per_shard": 12})
    run_ingest(cfg, RunOptions(out=str(root), executor="local", progress=False))
    ckpt = save_tokenizer(root / "tok", SMALL_TOKENIZER, encoder_gain=10.0)
    precompute.main(precompute_config(root, ckpt))
    runs = {}
    for model in models:
        run = root / "runs" / model
        args = [f"model={model}", f"lam_train.steps={steps}", f"lam_train.ckpt_every={steps}", *SMALL_LAM]
        train_lam.main(lam_config(root, ckpt, run, *args))
        runs[model] = run
    return ckpt, runs
