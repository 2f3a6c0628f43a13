"""Fit an ``IQLAgent`` (model/iql.py) on offline transitions: seeded minibatches (drawn with replacement),
one AdamW over the three disjoint parameter sets (the losses share no parameters), Polyak target updates.
``bc=True`` trains the policy alone with unit weights: behaviour cloning in the same action space.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from model.iql import IQLAgent

KEYS = ("states", "next_states", "actions", "rewards", "dones")


def fit_iql(
    agent: IQLAgent,
    data: dict[str, np.ndarray],
    seed: int,
    device: torch.device,
    bc: bool = False,
    desc: str = "iql",
) -> dict[str, float]:
    """Train ``agent`` on ``data`` (the arrays of ``KEYS``, M rows each); returns the mean of each loss over
    the last 100 steps. Deterministic for a seed on one device and thread count."""
    missing = [k for k in KEYS if k not in data]
    sizes = {len(data[k]) for k in KEYS if k in data}
    if missing or len(sizes) != 1 or not next(iter(sizes)):
        raise ValueError(f"{desc}: need equally long, non-empty {KEYS}; missing {missing}, lengths {sizes}")
    cfg, rows = agent.cfg, next(iter(sizes))
    rng = np.random.default_rng([seed, 0x1C1])
    torch.manual_seed(seed)
    tensors = {k: torch.as_tensor(data[k]) for k in KEYS}
    agent.to(device).train()
    params = agent.policy.parameters() if bc else (p for p in agent.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    history: dict[str, list[float]] = {}
    for _ in tqdm(range(cfg.steps), desc=desc, unit="step", leave=False, mininterval=2.0):
        idx = torch.from_numpy(rng.integers(rows, size=cfg.batch_size))
        batch = {k: v[idx].to(device) for k, v in tensors.items()}
        losses = agent.losses(batch, bc=bc)
        total = losses["policy"] if bc else losses["value"] + losses["q"] + losses["policy"]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if not bc:
            agent.update_targets()
        for k, v in losses.items():
            history.setdefault(k, []).append(v.item())
    agent.eval()
    return {k: float(np.mean(v[-100:])) for k, v in history.items() if not (bc and k != "policy")}
