"""The one visible table of world models the trainer can build: name -> constructor taking a LAMConfig.

Every model has the interface of ``model/base.py``: ``forward(batch) -> (loss, metrics)`` on
``batch["features"]`` [B, T, N, F] (plus ``batch["actions"]`` for the World Model), ``infer_actions``,
``sample_prior_actions`` and ``rollout`` for evaluation. Baselines are configurations of the same blocks
(slot attention, Genie ST stacks as IDM / FDM, the aggregator), not copies:

| name             | state                   | what drives a transition               | paper             |
|------------------|-------------------------|----------------------------------------|-------------------|
| flam             | K slots (joint)         | K Gaussian latents of size A           | section 4         |
| flam_no_temporal | K SAVi slots            | as flam                                | ablation, C.4     |
| flam_global      | K slots                 | as flam, IDM/FDM see all slots/latents | ablation, C.4     |
| genie            | N patches               | one VQ latent of size K*A              | Bruce 2024        |
| adaworld         | N patches               | one Gaussian latent of size K*A        | Gao 2025          |
| world_model      | N patches               | ground-truth actions, one action token | section 5         |
| playslot         | K SAVi slots, frozen    | K Gaussian latents of size A           | Villar-Corrales   |
| slotformer       | K SAVi slots, frozen    | nothing (current slots only)           | Wu 2022           |
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from model.base import TokenWorldModel
from model.config import LAMConfig
from model.flam import FLAM
from model.object_centric import PlaySlot, SlotFormer
from model.scene import AdaWorld, Genie, WorldModel


def flam_no_temporal(cfg: LAMConfig) -> FLAM:
    """Ablation: the factorizer without its temporal attention (SAVi-style slot initialisation)."""
    return FLAM(dataclasses.replace(cfg, factorizer_temporal=False))


def flam_global(cfg: LAMConfig) -> FLAM:
    """Ablation: Global-Coupled FLAM (IDM and FDM attend over all slots and all latents)."""
    return FLAM(dataclasses.replace(cfg, coupling="global"))


MODELS: dict[str, Callable[[LAMConfig], TokenWorldModel]] = {
    "flam": FLAM,
    "flam_no_temporal": flam_no_temporal,
    "flam_global": flam_global,
    "genie": Genie,
    "adaworld": AdaWorld,
    "world_model": WorldModel,
    "playslot": PlaySlot,
    "slotformer": SlotFormer,
}

# The paper's Table 1 columns, in its order (ablations are reported separately, Table 6).
TABLE1_ORDER = ("flam", "adaworld", "genie", "world_model", "playslot", "slotformer")


def build_model(name: str, cfg: LAMConfig) -> TokenWorldModel:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)} (model=...)")
    return MODELS[name](cfg)
