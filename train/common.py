"""Helpers shared by the training entry points: distributed setup, seeding, checkpoints, schedules.

One code path for CPU and GPU: under torchrun (``RANK`` set) the process group uses NCCL on GPU and
gloo on CPU; plain ``python`` runs a single process with no process group.
"""

from __future__ import annotations

import math
import os
import random
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

CHECKPOINT_FORMAT_VERSION = 1


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()


def init_distributed() -> DistInfo:
    """Join the torchrun process group when launched by torchrun; else a single CPU/GPU process."""
    cuda = torch.cuda.is_available()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if cuda:
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if cuda else "gloo")
        device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)
    return DistInfo(0, 1, 0, torch.device("cuda", 0) if cuda else torch.device("cpu"))


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def wrap_for_training(model: torch.nn.Module, dist_info: DistInfo, compile: bool) -> torch.nn.Module:
    """DDP under torchrun (device_ids on GPU only), then torch.compile on GPU when asked. Save and
    evaluate the unwrapped model."""
    wrapped = model
    if dist_info.distributed:
        from torch.nn.parallel import DistributedDataParallel

        ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
        # Staged models (PlaySlot, SlotFormer) leave one stage's parameters without gradients.
        find_unused = getattr(model, "has_unused_parameters", False)
        wrapped = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)
    if compile and dist_info.device.type == "cuda":
        wrapped = torch.compile(wrapped)
    return wrapped


def per_rank_batch(global_batch: int, world_size: int) -> int:
    """Global batch is the knob; each rank takes an equal share."""
    if global_batch % world_size:
        raise ValueError(
            f"global batch {global_batch} does not divide over {world_size} ranks: choose a multiple "
            f"of {world_size} (train.batch_size=...)"
        )
    return global_batch // world_size


def seed_everything(seed: int, rank: int = 0) -> None:
    """Per-rank seeds: the same run is reproducible, ranks draw different noise."""
    s = seed + 1000003 * rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states(extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every rank's RNG state (plus ``extra``, e.g. a generator's state), in rank order."""
    mine = {**rng_state(), **(extra or {})}
    if not dist.is_initialized():
        return [mine]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, mine)
    return states


def train_state(model, optimizer, scheduler, step: int, **extra: Any) -> dict[str, Any]:
    """The whole training state of an unwrapped model, for ``Checkpoints.save``."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        **extra,
    }


def restore_train_state(state: dict[str, Any], model, optimizer, scheduler, rank: int) -> int:
    """Load ``train_state`` into the objects; set this rank's RNG (or the last saved rank's, when
    resuming on more ranks than saved). Returns the step and leaves the rank's RNG dict in
    ``state["rng_of_rank"]`` for extras such as generator states."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rngs = state["rng"][min(rank, len(state["rng"]) - 1)]
    set_rng_state(rngs)
    state["rng_of_rank"] = rngs
    return int(state["step"])


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar metrics over ranks (identity in a single process)."""
    if not dist.is_initialized() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist(), strict=True))


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float = 0.1) -> float:
    """LR multiplier: linear warmup to 1, then cosine decay to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Checkpoints:
    """Whole-state checkpoints in ``<run>/ckpt/``: atomic writes, keep the last K, ``latest`` link.

    Files are ``ckpt-<uuid>.pt``; the step lives inside the checkpoint (never parsed from a name), and
    ``latest`` is a symlink swapped atomically after the new file is durable.
    """

    def __init__(self, run_dir: str | Path, keep_last: int = 3) -> None:
        self.dir = Path(run_dir) / "ckpt"
        self.keep_last = keep_last

    @property
    def latest(self) -> Path:
        return self.dir / "latest"

    def save(self, state: dict[str, Any]) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {**state, "checkpoint_format": CHECKPOINT_FORMAT_VERSION}
        name = f"ckpt-{uuid.uuid4().hex[:12]}.pt"
        tmp = self.dir / f".{name}.tmp"
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / name)
        link_tmp = self.dir / f".latest.{uuid.uuid4().hex[:8]}.tmp"
        os.symlink(name, link_tmp)
        os.replace(link_tmp, self.latest)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._prune()
        return self.dir / name

    def _prune(self) -> None:
        files = sorted(self.dir.glob("ckpt-*.pt"), key=lambda p: p.stat().st_mtime_ns)
        keep = {self.latest.resolve()}
        for path in files[: max(0, len(files) - self.keep_last)]:
            if path.resolve() not in keep:
                path.unlink(missing_ok=True)

    def clear_stale_temporaries(self) -> None:
        """Drop half-written files of a killed run. Call once when a run starts, never while another
        process may be saving into the same folder."""
        for tmp in self.dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    def load_latest(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        self.clear_stale_temporaries()
        if not self.latest.exists():
            return None
        return load_checkpoint(self.latest, map_location)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``Checkpoints.save`` (``weights_only=False``: ours hold RNG state and
    config dicts; never load checkpoints from untrusted sources)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: train one first or fix the path")
    state = torch.load(path, map_location=map_location, weights_only=False)
    if state.get("checkpoint_format") != CHECKPOINT_FORMAT_VERSION:
        fmt = state.get("checkpoint_format")
        raise ValueError(f"{path} is not a checkpoint of this project (format {fmt})")
    return state


def load_tokenizer(path: str | Path, device: torch.device):
    """Rebuild the frozen tokenizer from the config inside its checkpoint -> (Tokenizer, tokenizer id).

    The id is a hash of the checkpoint file: it names the token cache made with these weights.
    """
    from model.tokenizer import Tokenizer, TokenizerConfig
    from shards.config import from_dict
    from shards.tokens import file_id

    state = load_checkpoint(path, map_location="cpu")
    if state.get("kind") != "tokenizer":
        raise ValueError(f"{path} is not a tokenizer checkpoint (kind {state.get('kind')!r})")
    model = Tokenizer(from_dict(TokenizerConfig, state["tokenizer_config"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval().requires_grad_(False), file_id(path)


def load_world_model(path: str | Path, device: torch.device):
    """Rebuild a trained world model from the config inside its checkpoint (``train/lam.py``'s ``kind="lam"``)
    -> (model in eval mode, the checkpoint's resolved config dict, its step).

    Every consumer of a trained world model (evaluation, the demo report) loads it here, never from a
    config re-declared on the command line: an override that changes no weight shape (``lam.coupling``,
    ``lam.slot_iters``) would otherwise silently score a different model than the one trained.
    """
    from model.flam import LAMConfig
    from model.zoo import build_model
    from shards.config import from_dict

    state = load_checkpoint(path, map_location="cpu")
    if state.get("kind") != "lam":
        raise ValueError(
            f"{path} is not a world-model checkpoint of train/lam.py (kind {state.get('kind')!r})"
        )
    config = state["config"]
    model = build_model(config["model"], from_dict(LAMConfig, config["lam"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config, int(state["step"])
