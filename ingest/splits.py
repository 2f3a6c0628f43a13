"""Which split each episode (or nuPlan log) goes to: 80/10/10 by frame count, deterministic, no episode
in two splits. Used per work block by ``ingest/block.py`` and once for the whole dataset by sources that
know every unit's size up front (nuPlan, ``ingest/config.py``)."""

from __future__ import annotations

import numpy as np

from shards.format import SPLIT_FRACTIONS, SPLITS


def assign_splits(frames: list[int], seed: int, block: int) -> list[str]:
    """Assign each unit of a block (or of a whole dataset, for sources that know every unit's size up
    front: pass block=-1) to a split so that frames come out 80/10/10.

    Systematic sampling: units are laid end to end in a seeded random order on a circle of
    circumference sum(frames), the split regions (80%, 10%, 10% of it) are rotated by a seeded random
    offset, and each unit goes to the region holding its midpoint. The expected frame share of every
    split is exactly its target (no length bias), and ten equal-length units always give 8/1/1; with
    unequal lengths a small block can leave a split empty (its shard is then simply not written).
    """
    total = sum(frames)
    rng = np.random.default_rng([seed, block + 1, 0x5B117])
    order = rng.permutation(len(frames))
    offset = rng.random() * total
    bounds = np.cumsum(SPLIT_FRACTIONS) * total
    out = [""] * len(frames)
    start = 0.0
    for i in order:
        mid = (start + frames[i] / 2 - offset) % total if total else 0.0
        out[i] = SPLITS[min(int(np.searchsorted(bounds, mid, side="right")), len(SPLITS) - 1)]
        start += frames[i]
    return out
