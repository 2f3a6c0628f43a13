"""Helpers shared by the training entry points: distributed setup, seeding, checkpoints, schedules.

One code path for CPU and GPU: under torchrun (``RANK`` set) the process group uses NCCL on GPU and
gloo on CPU; plain ``python`` runs a single process with no process group.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import random
import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from shards.config import diff, to_dict
from shards.files import exclusive

CHECKPOINT_FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, not ours, or holding more than tensors and plain
    types."""


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
        barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """All ranks meet (no-op in one process). NCCL is told this rank's GPU: without device_ids it guesses
    one, warns, and can hang when it guesses a GPU another rank uses."""
    if not dist.is_initialized():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def wrap_for_training(model: torch.nn.Module, dist_info: DistInfo, compile: bool) -> torch.nn.Module:
    """DDP under torchrun (device_ids on GPU only), then ``torch.compile`` when asked: inductor on GPU
    (Triton kernels) and on CPU (C++ kernels) alike, DDP on NCCL or gloo. Save and evaluate the unwrapped
    model; models that decide something per step get it through ``begin_step`` on the unwrapped model."""
    wrapped = model
    if dist_info.distributed:
        from torch.nn.parallel import DistributedDataParallel

        ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
        # Staged models (PlaySlot, SlotFormer) leave one stage's parameters without gradients.
        find_unused = getattr(model, "has_unused_parameters", False)
        wrapped = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)
    if compile:
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
    """This process's RNG states as tensors and plain types only (a checkpoint loads with
    ``weights_only=True``): numpy's MT19937 key becomes an int64 tensor [624]."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),  # (version, tuple of 625 ints, gauss or None): plain types
        "numpy": {
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # This rank's GPU only: get_rng_state_all would create a context on every visible GPU, and a run
        # resumed on a node with fewer GPUs could not restore the others.
        state["cuda_device"] = torch.cuda.get_rng_state()
    return state


def cuda_rng_to_restore(state: dict[str, Any], device_index: int) -> torch.Tensor | None:
    """The CUDA RNG state of ``rng_state()`` for GPU ``device_index``: ``cuda_device`` (this rank's GPU when
    saved), else the entry of older checkpoints' per-GPU list ``cuda`` for that index; None when the
    checkpoint was saved without a GPU or on a node with fewer GPUs (the CUDA generator keeps its seed)."""
    if "cuda_device" in state:
        return state["cuda_device"]
    per_gpu = state.get("cuda") or []
    return per_gpu[device_index] if device_index < len(per_gpu) else None


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore ``rng_state()`` (or the numpy tuple older checkpoints hold). The byte tensors must be on
    the CPU: ``load_checkpoint`` keeps them there whatever the map location."""
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        key = numpy_state["key"].numpy().astype(np.uint32)
        rest = (numpy_state[k] for k in ("pos", "has_gauss", "cached_gaussian"))
        numpy_state = ("MT19937", key, *rest)
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available():  # a checkpoint from a GPU run resumes on a CPU too: then this is skipped
        cuda = cuda_rng_to_restore(state, torch.cuda.current_device())
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)


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
    ``state["rng_of_rank"]`` for extras such as generator states.

    The optimiser's settings (lr, betas, weight decay) stay those it was built with from the current
    config, not the checkpoint's: when a changed config was allowed (``check_resume``), the new values
    really apply; when nothing changed they are the same numbers, so the resume is still exact."""
    configured = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in optimizer.param_groups]
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    apply_optimizer_settings(optimizer, scheduler, configured)
    rngs = state["rng"][min(rank, len(state["rng"]) - 1)]
    set_rng_state(rngs)
    state["rng_of_rank"] = rngs
    return int(state["step"])


def apply_optimizer_settings(optimizer, scheduler, configured: list[dict[str, Any]]) -> None:
    """Put the configured settings (``initial_lr`` = the config's lr, betas, ...) back into every param
    group after a checkpoint load, and recompute the LambdaLR schedule's current lr from them."""
    for group, settings in zip(optimizer.param_groups, configured, strict=True):
        group.update(settings)
    scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    groups = zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
    for group, base, factor in groups:
        group["lr"] = base * factor(scheduler.last_epoch)  # LambdaLR's own formula: same float
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def resume_changes(saved: dict[str, Any], current: dict[str, Any], free: dict[str, set[str]]) -> list[str]:
    """Settings that differ between a checkpoint's config and this run's, over the sections of ``free``
    (each with the keys that may change on resume: step counts, logging, paths, opt-in flags)."""
    changes = []
    for section, keys in free.items():
        old = {k: v for k, v in saved.get(section, {}).items() if k not in keys}
        new = {k: v for k, v in current[section].items() if k not in keys}
        changes += diff(old, new, f"{section}.")
    return changes


def check_resume(
    state: dict[str, Any], cfg: Any, free: dict[str, set[str]], section: str, run_dir: Path, is_main: bool
) -> None:
    """Refuse to resume from ``state`` with changed settings (ValueError listing them) unless the run's
    ``<section>.allow_config_change`` is set; then say so and keep the old config.yaml beside the new one
    as ``config.until-step-N.yaml``. ``cfg`` is the run's Config, ``free`` as in ``resume_changes``."""
    current, step = to_dict(cfg), int(state["step"])
    changes = resume_changes(state["config"], current, free)
    if not changes:
        return
    listed, opt_in = "\n  ".join(changes), f"{section}.allow_config_change"
    if not current[section]["allow_config_change"]:
        raise ValueError(
            f"{run_dir} was trained with other settings (checkpoint at step {step}):\n  {listed}\n"
            f"Resume with the same settings, start a new run_dir, or pass {opt_in}=true to go on with the "
            "new values (they are applied, and the old config.yaml is kept beside the new one)."
        )
    print(f"resuming at step {step} with changed settings ({opt_in}):\n  {listed}", file=sys.stderr)
    old = run_dir / "config.yaml"
    if is_main and old.exists():
        shutil.copyfile(old, run_dir / f"config.until-step-{step:07d}.yaml")


def record_missing(run_dir: Path, missing: dict[str, Any]) -> None:
    """Write what a run trains without (allow_partial) to ``<run>/missing_data.json`` and say so."""
    path = Path(run_dir) / "missing_data.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(missing, indent=1, sort_keys=True))
    print(f"training without the data of {len(missing)} shard(s) (allow_partial): {path}", file=sys.stderr)


@contextlib.contextmanager
def run_lock(run_dir: Path, what: str) -> Iterator[None]:
    """One job per run folder: rank 0 (RANK from torchrun; 0 for one process) holds ``<run>/.lock`` for
    the job, and a second job into the same folder is refused naming the holder."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    with exclusive(run_dir, what):
        yield


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
        self._resumed = False  # load_latest succeeded: only then may a save prune older checkpoints
        self._unreadable: set[Path] = set()  # checkpoints load_latest could not use: never counted, kept

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
        if self._resumed:  # never delete what a failed or skipped resume has not looked at
            self._prune()
        return self.dir / name

    def _prune(self) -> None:
        files = sorted(self.dir.glob("ckpt-*.pt"), key=lambda p: p.stat().st_mtime_ns)
        files = [p for p in files if p.resolve() not in self._unreadable]
        keep = {self.latest.resolve()}
        for path in files[: max(0, len(files) - self.keep_last)]:
            if path.resolve() not in keep:
                path.unlink(missing_ok=True)

    def clear_stale_temporaries(self) -> None:
        """Drop half-written files of a killed run. Call once when a run starts, never while another
        process may be saving into the same folder."""
        for tmp in self.dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    def _candidates(self) -> list[Path]:
        """What to try, best first: the target of ``latest``, then every checkpoint, newest first."""
        files = sorted(self.dir.glob("ckpt-*.pt"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        first = [self.latest.resolve()] if self.latest.exists() else []
        return first + [p for p in files if p.resolve() not in first]

    def load_latest(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The state to resume from, None for a fresh run (no checkpoint at all). When ``latest`` is
        dangling, truncated, empty or not ours, the newest loadable checkpoint is used with a warning
        naming what was skipped; when none loads, CheckpointError: never a silent restart from step 0.
        ``map_location`` applies to the weights; RNG states stay on the CPU (see ``load_checkpoint``)."""
        self.clear_stale_temporaries()
        candidates = self._candidates()
        problems = []
        if self.latest.is_symlink() and not self.latest.exists():
            problems.append(f"{self.latest} points to {os.readlink(self.latest)}, which is missing")
        for path in candidates:
            try:
                state = load_checkpoint(path, map_location)
            except CheckpointError as err:
                problems.append(str(err))
                self._unreadable.add(path.resolve())
                continue
            if problems:
                print(
                    "warning: skipped unusable checkpoint(s):\n  "
                    + "\n  ".join(problems)
                    + f"\nresuming from {path} (step {state.get('step')})",
                    file=sys.stderr,
                )
            self._resumed = True
            return state
        if problems:
            raise CheckpointError(
                f"{self.dir} holds checkpoints but none can be loaded:\n  "
                + "\n  ".join(problems)
                + f"\nRestore a checkpoint, or move {self.dir.parent} away to start this run over"
            )
        self._resumed = True
        return None


def _allowed_numpy_globals() -> list[Any]:
    """The numpy globals of the RNG state that checkpoints before the tensor-only format hold: rebuilding
    a plain array runs no code, so ``weights_only=True`` may allow them."""
    if hasattr(np, "_core"):  # numpy 2 (numpy.core is a deprecated alias there)
        from numpy._core import multiarray
    else:
        from numpy.core import multiarray

    allowed = [multiarray._reconstruct, np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [dtypes.UInt32DType, dtypes.Int64DType, dtypes.Float64DType]
    return allowed


def _to_device(value: Any, device: str | torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``Checkpoints.save``: ``weights_only=True`` (tensors and plain types
    only, so a crafted file cannot run code), errors that name the file (CheckpointError).

    The file is read onto the CPU; tensors are then moved to ``map_location`` except the RNG states
    under ``"rng"``, which ``torch.set_rng_state`` / ``Generator.set_state`` accept on the CPU only
    (loading them straight to CUDA made every GPU resume fail)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: train one first or fix the path")
    try:
        with torch.serialization.safe_globals(_allowed_numpy_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[-1][:200]
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain types ({reason}): refused, as loading it "
            "could run code. Use checkpoints written by this project only"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(err).__name__}: {str(err)[:200]}): truncated or damaged"
        ) from err
    if not isinstance(state, dict) or state.get("checkpoint_format") != CHECKPOINT_FORMAT_VERSION:
        fmt = state.get("checkpoint_format") if isinstance(state, dict) else None
        raise CheckpointError(f"{path} is not a checkpoint of this project (format {fmt})")
    if torch.device(map_location) != torch.device("cpu"):
        state = {k: v if k == "rng" else _to_device(v, map_location) for k, v in state.items()}
    return state


def load_tokenizer(path: str | Path, device: torch.device):
    """Rebuild the frozen tokenizer from the config inside its checkpoint -> (Tokenizer, tokenizer id).

    The id is a hash of the checkpoint file: it names the token cache made with these weights. Loading
    draws no random numbers from the caller's generators (a trainer may load it before building its model).
    """
    from model.tokenizer import Tokenizer, TokenizerConfig
    from shards.config import from_dict
    from shards.tokens import file_id

    state = load_checkpoint(path, map_location="cpu")
    if state.get("kind") != "tokenizer":
        raise ValueError(f"{path} is not a tokenizer checkpoint (kind {state.get('kind')!r})")
    with torch.random.fork_rng(
        devices=[]
    ):  # its random init is overwritten: leave the caller's RNG as it was
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
    from model.config import LAMConfig
    from model.zoo import build_model
    from shards.config import from_dict
    from train.config import upgrade_config_dict

    state = load_checkpoint(path, map_location="cpu")
    if state.get("kind") != "lam":
        raise ValueError(
            f"{path} is not a world-model checkpoint of train/lam.py (kind {state.get('kind')!r})"
        )
    config = upgrade_config_dict(state["config"])
    model = build_model(config["model"], from_dict(LAMConfig, config["lam"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config, int(state["step"])
