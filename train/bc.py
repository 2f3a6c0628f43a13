"""Behaviour cloning on the demos' 64x64 views (paper section 5.3): every row of Table 4 trains the same
policy (``model/policy.py``'s PolicyNet, ``policy.net``) with the same settings (``policy.bc_fit``); only
its targets differ (``bc_targets``).

- vanilla BC: the labelled subset with its ground-truth actions, nothing else;
- FLAM / Genie / AdaWorld / supervised IDM: the labelled subset with ground truth plus every other frame
  with its pseudo-label (frames without one, the last of each clip, are left out).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.policy import PolicyNet, PolicyNetConfig
from shards.config import to_dict
from shards.policy_data import NO_LABEL
from train.common import Checkpoints, load_checkpoint
from train.policy_io import policy_header
from train.supervised import FitConfig, fit_classifier


def bc_targets(
    actions: np.ndarray, labelled: np.ndarray, pseudo: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, targets) to clone. actions: ground truth int64 [F]; labelled: rows whose ground truth may be
    used; pseudo: pseudo-labels int64 [F] (NO_LABEL where none) or None for vanilla BC."""
    if pseudo is None:
        return labelled, actions[labelled]
    targets = pseudo.copy()
    targets[labelled] = actions[labelled]
    rows = np.flatnonzero(targets != NO_LABEL)
    return rows, targets[rows]


def train_bc(
    obs: np.ndarray,
    rows: np.ndarray,
    targets: np.ndarray,
    net: PolicyNetConfig,
    num_actions: int,
    fit: FitConfig,
    seed: int,
    run_dir: Path,
    env: dict[str, Any],
    inputs: dict[str, Any],
    device: torch.device,
) -> Path:
    """Clone ``targets`` from the views ``obs[rows]`` (uint8 [F, 64, 64, 3]) and save the policy to
    ``<run_dir>/ckpt/latest``. ``env``: game, distribution_mode, use_backgrounds (what it will play);
    ``inputs``: what it was trained from (label source and id, budget, seed), recorded in the checkpoint.
    A finished run with the same inputs and settings is reused, not retrained."""
    ckpts = Checkpoints(run_dir, keep_last=1)
    record = {"inputs": inputs, "fit": to_dict(fit), "net": to_dict(net), "seed": seed, "rows": len(rows)}
    if ckpts.latest.exists() and load_checkpoint(ckpts.latest).get("training", {}).get("record") == record:
        return ckpts.latest
    policy = PolicyNet(net, num_actions)
    stats = fit_classifier(
        policy,
        lambda r: torch.from_numpy(np.ascontiguousarray(obs[r])),
        rows,
        targets,
        fit,
        seed,
        device,
        desc=f"bc {run_dir.name}",
    )
    header = policy_header("bc", policy, env["game"], env["distribution_mode"], env["use_backgrounds"])
    ckpts.save(
        {
            "model": policy.state_dict(),
            "policy": header,
            "step": fit.steps,
            "training": {"record": record, **stats},
        }
    )
    return ckpts.latest
