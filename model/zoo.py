"""The one visible table of world models the trainer can build: name -> class taking a LAMConfig.

Every model has the same interface: ``forward(batch) -> (loss, metrics)`` on ``batch["features"]``
[B, T, N, F] (plus ``batch["actions"]`` for models that use ground-truth actions), ``infer_actions``
and ``rollout`` for evaluation.
"""

from __future__ import annotations

from torch import nn

from model.flam import FLAM, LAMConfig

MODELS: dict[str, type[nn.Module]] = {
    "flam": FLAM,
}


def build_model(name: str, cfg: LAMConfig) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)} (model=...)")
    return MODELS[name](cfg)
