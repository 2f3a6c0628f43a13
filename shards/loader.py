"""Streaming loader over clip shards: one pass (precompute, eval) or endless epochs (training), split
across torchrun ranks and DataLoader workers, resumable at an exact position.

    ds = ClipDataset("data/multigrid", "train", infinite=True, shuffle=True, buffer_size=256, window=8)
    loader = ClipLoader(ds, batch_size=32, num_workers=4)       # a DataLoader that records positions
    for step, batch in zip(range(steps), loader):               # batch["frames"]: uint8 [B, T, H, W, C]
        ...
        states = gather_states(loader.state_dict())             # collective: every rank's position,
        if rank == 0: ckpt["data"] = states                     # saved once by rank 0
    loader.load_state_dict(ckpt["data"])                        # before iterating: continues exactly

Stages, each a plain function tested alone, run per worker slot and epoch:

    list_shards -> shuffle_shards (seed, epoch) -> split_by_rank -> split_by_worker
      -> read_samples (shards/tar.py: tar -> raw member bytes) -> select_samples (sample-level split,
         small sets only) -> shuffle_samples (seeded buffer) -> skip_consumed (numbers samples, drops the
         consumed ones) -> decode_samples (shards/decode.py: meta, window choice, decode of the window's
         frames, arrays, checks) -> dicts

**Split.** Every rank and worker computes the epoch's shard order from (seed, epoch) alone, then takes
its part: shards round robin over ranks, then the rank's shards round robin over its DataLoader
workers (a "slot"). Each shard of an epoch is read by exactly one (rank, worker). Where a level has
fewer shards than parts (5 shards, 2 ranks x 4 workers), that level and the ones below split by
sample instead: every reader of the group reads the group's shards but keeps (and decodes) only the
samples at index i with (i + epoch) % parts == its part. Still exactly once, at the cost of reading
the bytes of small sets several times. Rotating the assignment by the epoch means that even with fewer
samples than readers every reader gets samples in some epochs, so infinite streams never run dry.

**Modes.** ``infinite=False`` reads one epoch: every sample exactly once over all ranks x workers,
ranks may get different counts (fine for precompute and eval, which do no per-batch collectives).
``infinite=True`` loops epochs forever, reshuffling each; every slot runs its own epochs, so a rank's
stream never ends and DDP training by step count never hangs on uneven shards at an epoch end (the
price: with uneven shard sizes some samples come round a little more often than others, as with
webdataset resampling). A slot that yields nothing for ``EMPTY_EPOCH_LIMIT`` + parts consecutive epochs
(every shard it gets is unreadable) raises instead of spinning.

**Determinism.** The stream of a slot is a function of (shards, seed, epoch, rank, world size,
num_workers, buffer_size): shard order from (seed, epoch), buffer draws from (seed, epoch, rank, slot),
window starts from (seed, epoch, key). DataLoader hands out batches round robin over workers
(``in_order=True``, its default), so the batch sequence is deterministic too; in one-pass mode only the
interleaving after the first worker runs dry may vary.

**Resume.** Every sample carries ``cursor = (slot, num_slots, epoch, pos)``: pos counts the slot's
stream after the shuffle buffer. ``ClipLoader`` (or ``dataset.record(batch)`` after a plain
DataLoader) keeps the last cursor of every slot and the slot that comes next; that is the rank's
state. On ``load_state_dict`` each slot replays its epoch's raw stream up to pos (tar bytes and buffer
draws, no decode), and DataLoader worker i takes slot (i + next_slot) % num_workers, so the round robin
continues with the right worker: the same samples in the same order as an uninterrupted run. The
state is per rank: ``gather_states`` collects all of them for a rank-0 checkpoint and
``load_state_dict`` takes that list. Resume needs the same shards, seed, shuffle, buffer size, world
size and num_workers; in infinite mode ``strict=False`` accepts another world size or worker count by
restarting every slot at the epoch after the furthest recorded one. Load the state before iterating:
workers copy the dataset when the DataLoader iterator starts (``persistent_workers`` keeps the copies
of the first iteration, so resume only with fresh workers). A new ClipLoader iteration continues an
infinite stream after the last batch handed out, and reads a fresh pass in one-pass mode.

**Corrupt data.** Unreadable or truncated tars end their shard (complete samples before the break are
kept); samples with missing members, bad meta/arrays, undecodable video or inconsistent lengths are
skipped. Each is logged with shard, key and reason, and counted in ``dataset.stats``
(``shards/stats.py``): counters in shared memory, one row per DataLoader worker, summed over the rank's
workers (per rank: all-reduce them for a global figure). Configuration errors (format version, a window
longer than the clip) raise.

**Samples.** ``frames`` uint8 [T, H, W, C] (layout "THWC", the default) or [T, C, H, W] ("TCHW", what
conv nets take), C = 3 RGB; ``actions`` int64 [T] (Procgen) or [T, A] (MultiGrid), ``positions``
int64 [T, A, 2], ``rewards`` float32 [T] and ``dones`` bool [T], sliced to the same window as the frames
and absent where the source has none; ``key``;
``shard`` (path of the tar it came from); ``meta`` (the clip's JSON as a dict); ``start`` (first frame of
the window within the clip); ``cursor``.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from shards.decode import decode_samples
from shards.format import SPLITS
from shards.manifest import load_manifest
from shards.stats import LoaderStats
from shards.tar import RawSample, ShardInfo, read_samples

log = logging.getLogger(__name__)

LAYOUTS = ("THWC", "TCHW")
STATE_VERSION = 1
EMPTY_EPOCH_LIMIT = 8
# Salts keep the shard order, buffer draws and window starts (shards/decode.py) independent streams of one
# seed.
_SHARD_SALT, _BUFFER_SALT = 0x5A4D, 0xB0FF


# ---------------------------------------------------------------------------------------------- split


@dataclass(frozen=True)
class Part:
    """What one reader takes from one epoch: the samples of ``shards`` (concatenated in order) at index
    i with (i + epoch) % mod == rem. mod == 1: the whole shards."""

    shards: tuple[ShardInfo, ...]
    mod: int = 1
    rem: int = 0

    def takes(self, index: int, epoch: int) -> bool:
        return (index + epoch) % self.mod == self.rem


def list_shards(dataset_dir: str | Path, split: str) -> list[ShardInfo]:
    """A split's shards with their sample counts, in manifest order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    manifest = load_manifest(dataset_dir)
    shards = [
        ShardInfo(
            str(Path(dataset_dir) / s["path"]), int(s["num_samples"]), str(s["sha256"]), int(s["size_bytes"])
        )
        for s in manifest["shards"]
        if s["split"] == split
    ]
    if not shards:
        raise ValueError(f"the manifest of {dataset_dir} lists no {split} shards")
    return shards


def shuffle_shards(shards: Sequence[ShardInfo], seed: int, epoch: int) -> list[ShardInfo]:
    """The epoch's shard order, drawn from (seed, epoch) only: every rank and worker agrees on it
    without communicating, which is what makes the split below exact."""
    order = np.random.default_rng([seed, epoch, _SHARD_SALT]).permutation(len(shards))
    return [shards[i] for i in order]


def split_part(part: Part, index: int, count: int) -> Part:
    """Part ``index`` of ``count``: whole shards round robin while there are at least ``count`` of
    them, else every ``count``-th sample (each reader then reads all the shards, decodes its own)."""
    if not 0 <= index < count:
        raise ValueError(f"part {index} of {count} does not exist")
    if part.mod == 1 and len(part.shards) >= count:
        return Part(part.shards[index::count])
    return Part(part.shards, part.mod * count, part.rem + part.mod * index)


def split_by_rank(part: Part, rank: int, world_size: int) -> Part:
    return split_part(part, rank, world_size)


def split_by_worker(part: Part, worker: int, num_workers: int) -> Part:
    return split_part(part, worker, num_workers)


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): the arguments if given, else torch.distributed if initialised, else the
    RANK / WORLD_SIZE that torchrun sets, else (0, 1)."""
    if (rank is None) != (world_size is None):
        raise ValueError("pass both rank and world_size, or neither")
    if rank is None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank, world_size = dist.get_rank(), dist.get_world_size()
        else:
            rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return rank, world_size


# ------------------------------------------------------------------------------------ sample stages


def select_samples(samples: Iterable[RawSample], part: Part, epoch: int) -> Iterator[RawSample]:
    """Keep the part's samples when it splits by sample (see ``split_part``); pass through otherwise."""
    if part.mod == 1:
        yield from samples
        return
    for i, sample in enumerate(samples):
        if part.takes(i, epoch):
            yield sample


def shuffle_samples(samples: Iterable[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Shuffle buffer of ``size`` items (0 = off): once full, each new item replaces a uniformly drawn
    one, which is emitted; the rest is shuffled out at the end. Deterministic for a given ``rng``."""
    if size <= 0:
        yield from samples
        return
    buffer: list[Any] = []
    for item in samples:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = int(rng.integers(size))
        yield buffer[j]
        buffer[j] = item
    rng.shuffle(buffer)
    yield from buffer


def skip_consumed(
    samples: Iterable[RawSample], skip: int, slot: int, num_slots: int, epoch: int
) -> Iterator[RawSample]:
    """Number the stream 1, 2, ... into ``cursor`` and drop the first ``skip`` samples (consumed before a
    checkpoint). They are never decoded; reading them only rebuilds the shuffle buffer's state."""
    for pos, sample in enumerate(samples, 1):
        if pos > skip:
            sample.cursor = (slot, num_slots, epoch, pos)
            yield sample


# ------------------------------------------------------------------------------------------ dataset


class ClipDataset(IterableDataset):
    """Clips from WebDataset clip shards as dict samples (see the module doc for split, modes, resume).

    ``shards``: a dataset folder (``<out>/<dataset>``, read through its manifest; give ``split``) or an
    explicit sequence of shard paths or ``ShardInfo`` (whose sample counts are then checked).
    ``shuffle`` reshuffles the shard order every epoch from (seed, epoch); ``buffer_size`` > 0 adds a
    seeded sample shuffle buffer per worker. ``window``: crop a random ``window``-frame span of each
    clip (start drawn per sample from seed, epoch and key).
    ``rank``/``world_size`` default to torch.distributed, else RANK/WORLD_SIZE, else 0/1.
    """

    def __init__(
        self,
        shards: str | Path | Sequence[str | Path],
        split: str | None = None,
        *,
        infinite: bool = False,
        shuffle: bool = False,
        buffer_size: int = 0,
        seed: int = 0,
        epoch: int = 0,
        window: int | None = None,
        layout: str = "THWC",
        backend: str = "auto",
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(shards, (str, Path)):
            if split is None:
                raise ValueError(f"give the split to read from the dataset folder {shards}")
            self.shards = list_shards(shards, split)
        else:
            if split is not None:
                raise ValueError("split selects from a dataset folder; an explicit shard list has no split")
            self.shards = [p if isinstance(p, ShardInfo) else ShardInfo(str(p)) for p in shards]
            if not self.shards:
                raise ValueError("the shard list is empty")
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 frame, got {window}")
        if buffer_size < 0 or seed < 0 or epoch < 0:
            raise ValueError("buffer_size, seed and epoch must be >= 0")
        if backend not in ("auto", "decord", "pyav"):
            raise ValueError(f"unknown decode backend {backend!r}; expected auto, decord or pyav")
        self.infinite, self.shuffle, self.buffer_size = infinite, shuffle, buffer_size
        self.seed, self.epoch, self.window, self.layout, self.backend = seed, epoch, window, layout, backend
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self._stats = LoaderStats()
        self._start: dict[str, Any] | None = None  # where the next iteration starts (None: epoch start)
        self._consumed = 0
        self._reset_positions()

    # -- what the stream holds

    @property
    def num_samples(self) -> int | None:
        """Samples in all the shards per the manifest (None for an explicit shard list)."""
        counts = [s.num_samples for s in self.shards]
        return None if None in counts else sum(counts)

    def expected_samples(self) -> int | None:
        """Samples this rank's one-pass stream holds when nothing is corrupt (None without counts)."""
        order = shuffle_shards(self.shards, self.seed, self.epoch) if self.shuffle else self.shards
        part = split_by_rank(Part(tuple(order)), self.rank, self.world_size)
        counts = [s.num_samples for s in part.shards]
        if None in counts:
            return None
        if part.mod == 1:
            return sum(counts)
        return sum(1 for i in range(sum(counts)) if part.takes(i, self.epoch))

    @property
    def stats(self) -> dict[str, Any]:
        """Yielded and skipped samples and broken shards, summed over this rank's workers."""
        return self._stats.as_dict()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next iteration reads (its shard order, buffer and windows). Moving to
        another epoch drops a loaded or recorded position; setting the current one keeps it."""
        if epoch != self.epoch:
            self.epoch = epoch
            self._start = None
            self._reset_positions()

    # -- iteration

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The stream of this process: the whole rank's without DataLoader workers, else the worker's
        slot. It starts at the loaded state (for its epoch), else at the start of ``epoch``; the start
        is taken now, not at the first sample, so ClipLoader can move on once the iterator exists."""
        info = get_worker_info()
        worker, num_slots = (info.id, info.num_workers) if info is not None else (0, 1)
        slot, epoch, skip = self._slot_start(worker, num_slots)
        if not self.infinite:
            return self._read_epoch(slot, num_slots, epoch, skip)
        return self._read_epochs(slot, num_slots, epoch, skip)

    def _read_epochs(self, slot: int, num_slots: int, epoch: int, skip: int) -> Iterator[dict[str, Any]]:
        parts = split_by_worker(
            split_by_rank(Part(tuple(self.shards)), self.rank, self.world_size), slot, num_slots
        ).mod
        empty = 0
        for e in itertools.count(epoch):
            n = 0
            for sample in self._read_epoch(slot, num_slots, e, skip if e == epoch else 0):
                n += 1
                yield sample
            resumed_at_end = e == epoch and skip > 0
            empty = 0 if n or resumed_at_end else empty + 1
            if empty >= EMPTY_EPOCH_LIMIT + parts:
                raise RuntimeError(
                    f"rank {self.rank} worker slot {slot} got no usable sample in {empty} consecutive "
                    "epochs: the shards it reads are unreadable (see the warnings above)"
                )

    def _read_epoch(self, slot: int, num_slots: int, epoch: int, skip: int) -> Iterator[dict[str, Any]]:
        order = shuffle_shards(self.shards, self.seed, epoch) if self.shuffle else self.shards
        part = split_by_worker(split_by_rank(Part(tuple(order)), self.rank, self.world_size), slot, num_slots)
        rng = np.random.default_rng([self.seed, epoch, self.rank, slot, _BUFFER_SALT])
        raw = read_samples(part.shards, self._stats)
        raw = select_samples(raw, part, epoch)
        raw = shuffle_samples(raw, self.buffer_size, rng)
        raw = skip_consumed(raw, skip, slot, num_slots, epoch)
        yield from decode_samples(
            raw,
            layout=self.layout,
            window=self.window,
            seed=self.seed,
            epoch=epoch,
            backend=self.backend,
            stats=self._stats,
        )

    def _slot_start(self, worker: int, num_slots: int) -> tuple[int, int, int]:
        """(slot, epoch, samples to skip) of DataLoader worker ``worker`` from the loaded state."""
        start = self._start
        if start is None or (not self.infinite and start["epoch"] != self.epoch):
            return worker, self.epoch, 0
        if "restart_epoch" in start:
            return worker, start["restart_epoch"], 0
        if start["num_slots"] == 0:  # saved before anything was consumed
            return worker, start["epoch"], 0
        if start["num_slots"] != num_slots:
            raise ValueError(
                f"the loader state was recorded with {start['num_slots']} DataLoader worker slot(s), this "
                f"DataLoader has {num_slots}: resume with the same num_workers (in infinite mode, "
                "ClipLoader.load_state_dict(state, strict=False) restarts at the next epoch instead)"
            )
        slot = (worker + start["next_slot"]) % num_slots
        epoch, pos = start["slots"][slot]
        return slot, epoch, pos

    # -- position

    def _reset_positions(self) -> None:
        self._num_slots: int | None = None
        self._positions: dict[int, tuple[int, int]] = {}
        self._next_slot = 0

    def _start_here(self) -> None:
        """Make the next iteration start after the last recorded batch (ClipLoader, infinite mode)."""
        if self._num_slots is not None:
            self._start = {
                "epoch": self.epoch,
                "num_slots": self._num_slots,
                "slots": [self._positions.get(s, (self.epoch, 0)) for s in range(self._num_slots)],
                "next_slot": self._next_slot,
            }

    def record(self, batch: dict[str, Any]) -> None:
        """Note that ``batch`` (from collate_clips, or one sample) was consumed. ClipLoader calls this;
        after a plain DataLoader with workers, call it for every batch or state_dict() stays behind."""
        cursors = batch["cursor"]
        if cursors and isinstance(cursors[0], int):  # a single sample
            cursors = [cursors]
        for slot, num_slots, epoch, pos in cursors:
            if self._num_slots is not None and num_slots != self._num_slots:
                raise ValueError(f"batch from {num_slots} worker slots, earlier ones from {self._num_slots}")
            self._num_slots = int(num_slots)
            self._positions[int(slot)] = (int(epoch), int(pos))
            self._next_slot = (int(slot) + 1) % int(num_slots)
        self._consumed += len(cursors)

    def _fingerprint(self) -> dict[str, Any]:
        names = "\n".join(Path(s.path).name for s in self.shards)  # names, not paths: data may move
        return {
            "shards": hashlib.sha1(names.encode()).hexdigest()[:16],
            "seed": self.seed,
            "shuffle": self.shuffle,
            "buffer_size": self.buffer_size,
            "infinite": self.infinite,
        }

    def state_dict(self) -> dict[str, Any]:
        """This rank's position: per worker slot the (epoch, pos) of its last consumed sample, the slot
        that comes next, and what the stream depends on (checked on load). JSON-serialisable."""
        num_slots = self._num_slots or 0
        return {
            "version": STATE_VERSION,
            "rank": self.rank,
            "world_size": self.world_size,
            "epoch": self.epoch,
            "num_slots": num_slots,
            "slots": [list(self._positions.get(s, (self.epoch, 0))) for s in range(num_slots)],
            "next_slot": self._next_slot,
            "consumed": self._consumed,  # samples this rank consumed since the run began (for logs)
            "fingerprint": self._fingerprint(),
        }

    def load_state_dict(
        self,
        state: dict[str, Any] | Sequence[dict[str, Any]] | None,
        strict: bool = True,
        num_workers: int | None = None,
    ) -> None:
        """Resume from ``state_dict()`` (this rank's) or from ``gather_states`` (every rank's); None
        starts afresh. Call before iterating. See the module doc for what must match. ``num_workers``
        (ClipLoader passes it) lets a changed worker count be caught here rather than in the workers."""
        if state is None:
            self._start, self._consumed = None, 0
            self._reset_positions()
            return
        states = list(state) if isinstance(state, (list, tuple)) else [state]
        for s in states:
            if s.get("version") != STATE_VERSION:
                raise ValueError(f"loader state version {s.get('version')}, this code reads {STATE_VERSION}")
            theirs, ours = s["fingerprint"], self._fingerprint()
            diff = sorted(k for k in ours if theirs.get(k) != ours[k])
            if diff:
                raise ValueError(f"the loader state belongs to another stream: {', '.join(diff)} differ")
        if isinstance(state, (list, tuple)):
            mine = states[self.rank] if len(states) == self.world_size else None
        else:
            mine = state if (state["rank"], state["world_size"]) == (self.rank, self.world_size) else None
        slots_now = None if num_workers is None else max(num_workers, 1)
        problem = ""
        if mine is None:
            problem = (
                f"it is from rank {states[0]['rank']} of {states[0]['world_size']}, this is rank {self.rank} "
                f"of {self.world_size} (a rank-0 checkpoint needs gather_states() output)"
            )
        elif mine["num_slots"] and slots_now and mine["num_slots"] != slots_now:
            problem = f"it has {mine['num_slots']} DataLoader worker slot(s), this loader {slots_now}"
        if problem:
            if strict or not self.infinite:
                hint = ", or load_state_dict(state, strict=False) to restart at the next epoch"
                raise ValueError(f"cannot resume the loader: {problem}{hint if self.infinite else ''}")
            self._restart_after(states)
            return
        self.epoch = mine["epoch"]
        self._start = {k: mine[k] for k in ("epoch", "num_slots", "slots", "next_slot")}
        self._start["slots"] = [tuple(p) for p in mine["slots"]]
        self._num_slots = mine["num_slots"] or None
        self._positions = dict(enumerate(self._start["slots"]))
        self._next_slot = mine["next_slot"]
        self._consumed = mine["consumed"]

    def _restart_after(self, states: list[dict[str, Any]]) -> None:
        epoch = max([s["epoch"] for s in states] + [e for s in states for e, _ in s["slots"]]) + 1
        log.warning("loader layout changed since the checkpoint: restarting every worker at epoch %d", epoch)
        self.epoch = epoch
        self._start = {"epoch": epoch, "restart_epoch": epoch}
        self._reset_positions()


def gather_states(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's loader state in rank order (all_gather under torch.distributed; else [state]), so
    rank 0 can save one checkpoint that every rank resumes from."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        states: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(states, state)
        return states
    return [state]


# ------------------------------------------------------------------------------------- batching


def collate_clips(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples: ``frames`` uint8 [B, T, H, W, C] (or [B, T, C, H, W]), ``actions`` int64 [B, T(, A)],
    ``positions`` int64 [B, T, A, 2], ``start`` int64 [B]; ``key``, ``shard``, ``meta``, ``cursor`` as lists.
    actions/positions are left out when no sample has them; a batch mixing both is refused."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    # default_collate stacks straight into shared memory inside a worker: one copy fewer per batch.
    batch = {
        "frames": default_collate([s["frames"] for s in samples]),
        "start": torch.tensor([s["start"] for s in samples], dtype=torch.int64),
        "key": [s["key"] for s in samples],
        "shard": [s["shard"] for s in samples],
        "meta": [s["meta"] for s in samples],
        "cursor": [s["cursor"] for s in samples],
    }
    for name in ("actions", "positions", "rewards", "dones"):
        present = sum(name in s for s in samples)
        if present == len(samples):
            batch[name] = default_collate([s[name] for s in samples])
        elif present:
            raise ValueError(f"batch mixes samples with and without {name}: {batch['key']}")
    return batch


class ClipLoader(DataLoader):
    """DataLoader over a ClipDataset that batches with ``collate_clips`` and records every batch it hands
    out, so ``state_dict()`` is the position of what the caller consumed (not of what was prefetched)."""

    def __init__(self, dataset: ClipDataset, batch_size: int = 1, num_workers: int = 0, **kwargs: Any):
        if not isinstance(dataset, ClipDataset):
            raise TypeError(f"ClipLoader needs a ClipDataset, got {type(dataset).__name__}")
        if not kwargs.get("in_order", True):
            raise ValueError("in_order=False breaks the worker round robin that resume relies on")
        kwargs.setdefault("collate_fn", collate_clips)
        super().__init__(dataset, batch_size=batch_size, num_workers=num_workers, **kwargs)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """In infinite mode every iteration continues the stream after the last batch handed out (or at
        a loaded state); in one-pass mode an iteration reads a pass of the dataset's epoch: the rest of
        it right after load_state_dict, else all of it."""
        ds = self.dataset
        if ds.infinite:
            ds._start_here()
        elif ds._start is None:
            ds._reset_positions()
        batches = super().__iter__()  # workers copy the dataset (and its start) here
        if not ds.infinite:
            ds._start = None  # a loaded position serves one pass
        for batch in batches:
            ds.record(batch)
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return self.dataset.state_dict()

    def load_state_dict(
        self, state: dict[str, Any] | Sequence[dict[str, Any]] | None, strict: bool = True
    ) -> None:
        self.dataset.load_state_dict(state, strict, num_workers=self.num_workers)
