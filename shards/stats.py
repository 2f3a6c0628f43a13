"""Counters of what the streaming loader read and skipped, shared by its stages (``shards/tar.py``,
``shards/decode.py``, ``shards/loader.py``) across DataLoader workers without locks."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

# Why a sample was skipped: a broken tar, a missing member, bad meta, a bad array, undecodable video,
# lengths or sizes that disagree.
SKIP_REASONS = ("tar", "missing", "meta", "array", "decode", "shape")


class LoaderStats:
    """Counters in a shared-memory tensor with one row per process (row 0: iteration in this process,
    row 1 + i: DataLoader worker i), so workers count without locks and the main process reads the
    sum. torch hands shared tensors to workers by handle, under fork and spawn alike. ``samples``
    counts yielded samples, prefetched ones included."""

    NAMES = ("samples", "shard_errors", *(f"skip_{r}" for r in SKIP_REASONS))
    ROWS = 257  # workers beyond 256 share rows (and may then lose a count in a race)

    def __init__(self) -> None:
        self._table = torch.zeros(self.ROWS, len(self.NAMES), dtype=torch.int64).share_memory_()
        self._column = {name: i for i, name in enumerate(self.NAMES)}
        self._view: np.ndarray | None = None  # numpy view of the table: a count costs ~0.2 us

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_view": None}

    def add(self, name: str, n: int = 1) -> None:
        if self._view is None:
            self._view = self._table.numpy()
        info = get_worker_info()
        row = 0 if info is None else 1 + info.id % (self.ROWS - 1)
        self._view[row, self._column[name]] += n

    def as_dict(self) -> dict[str, Any]:
        values = dict(zip(self.NAMES, self._table.sum(0).tolist(), strict=True))
        skipped = {r: values[f"skip_{r}"] for r in SKIP_REASONS}
        return {
            "samples": values["samples"],
            "skipped": sum(skipped.values()),
            "skipped_by_reason": skipped,
            "shard_errors": values["shard_errors"],
        }


def tally(stats: LoaderStats | None, name: str) -> None:
    """``stats.add(name)`` when there are stats."""
    if stats is not None:
        stats.add(name)
