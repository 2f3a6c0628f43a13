"""What the slots of a slot model hold, on the evaluation windows: DCI against agent positions with the
Random reference (paper Table 2, ``train/eval/dci.py``) and slot-agent assignments (Figs. 7-9,
``train/eval/assignment.py``).

Axes: W windows, L frames per window, N tokens, F = FSQ width, K slots, D slot width, M agents.
"""

from __future__ import annotations

import torch

from train.eval.assignment import agent_slot_mass, assignment_stats
from train.eval.dci import dci, random_slots_like
from train.eval.rollout import batched


def frame_slots(model, features: torch.Tensor, batch: int, device) -> torch.Tensor:
    """features [W, L, N, F] -> the slots of every frame [W * L, K, D]."""
    return batched(model.slots, features, batch, device).flatten(0, 1)


def slot_dci(model, features: torch.Tensor, positions: torch.Tensor, batch: int, seed: int, device) -> dict:
    """D, C, I of ``model``'s slots against agent positions [W, L, M, 2]."""
    return dci(frame_slots(model, features, batch, device), positions.flatten(0, 1), seed=seed)


def random_dci(model, features: torch.Tensor, positions: torch.Tensor, batch: int, seed: int, device) -> dict:
    """The Random reference: Gaussian slots shaped like ``model``'s, through the same probe."""
    slots = random_slots_like(frame_slots(model, features, batch, device), seed=seed)
    return dci(slots, positions.flatten(0, 1), seed=seed)


def slot_assignment(model, features, positions, cells, grid, batch: int, device) -> dict:
    """Which slot owns which agent in every frame: consistency over time, how often two agents share a
    slot, and the owners int [W, L, M] (``assignment_stats``). cells: the (W, H) grid cells of the frames;
    grid: the (h, w) token grid."""
    attn = batched(model.slot_attention, features, batch, device)  # [W, L, K, N]
    return assignment_stats(agent_slot_mass(attn, positions, cells, grid))
