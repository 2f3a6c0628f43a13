"""Which slot holds which agent, one-to-one, for the consumers of a factored world model: the per-slot
cycle-consistency test (``train/eval/transfer.py``), the controller (``train/controller.py``) and the
per-slot planning cost (``train/plan.py``).

Axes: B clips, T frames, K slots, N = h * w tokens, M agents, (W, H) grid cells of the simulator.

An agent's mass on each slot is the factorizer's attention over the tokens covering its cell
(``train/eval/assignment.py:agent_slot_mass``); the per-frame optimal one-to-one matching of agents to
slots (``train/eval/dci.py:match_slots``, K >= M) maximises the total mass. One-to-one, so two agents never
share the latent action of one slot (an argmax per agent could give them the same slot).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from shards.manifest import load_manifest
from train.eval.assignment import agent_slot_mass
from train.eval.dci import match_slots


def grid_cells(dataset_dir: str | Path) -> tuple[int, int] | None:
    """(W, H) grid cells of a MultiGrid dataset (the room of its ``env_id``, walls included: what the
    frames show), from its manifest; None for datasets without a grid (Procgen, nuPlan)."""
    config = load_manifest(dataset_dir)["config"]
    if config.get("source_kind") != "multigrid":
        return None
    match = re.search(r"(\d+)x(\d+)", config["source"]["env_id"])
    if match is None:
        raise ValueError(f"cannot read the room size from MultiGrid env_id {config['source']['env_id']!r}")
    return int(match.group(1)), int(match.group(2))


@torch.no_grad()
def agent_slots(
    model, features: torch.Tensor, positions: torch.Tensor, cells: tuple[int, int], tokens: tuple[int, int]
) -> torch.Tensor:
    """features [B, T, N, F], positions [B, T, M, 2] (x, y) -> sigma int64 [B, T, M]: the slot of agent j
    in frame t, one-to-one per frame (needs K >= M)."""
    attn = model.slot_attention(features)  # [B, T, K, N]
    return match_to_slots(attn, positions.to(attn.device), cells, tokens)


def match_to_slots(
    attn: torch.Tensor, positions: torch.Tensor, cells: tuple[int, int], tokens: tuple[int, int]
) -> torch.Tensor:
    """attn [B, T, K, N], positions [B, T, M, 2] -> sigma [B, T, M] (see the module docstring)."""
    b, t, k, _ = attn.shape
    m = positions.shape[2]
    if k < m:
        raise ValueError(f"{m} agents need at least {m} slots for a one-to-one matching, the model has {k}")
    mass = agent_slot_mass(attn, positions, cells, tokens)  # [B, T, M, K]
    cost = -mass.flatten(0, 1).transpose(1, 2)  # [B T, K, M]
    return match_slots(cost).reshape(b, t, m)
