"""One supervised classification loop for the three small learners of policy learning: the action decoder
(latent actions -> action), the supervised inverse dynamics model (two views -> action) and the
behaviour-cloning policy (view -> action). Each gives ``inputs(rows)`` -> a batch tensor and integer
targets per row; this module does the rest (seeded minibatches, AdamW, cross-entropy, a progress bar).

Shapes: M training rows, B batch, A actions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm


@dataclass(frozen=True)
class FitConfig:
    """How long and how fast a learner trains (config sections of ``PolicyConfig``)."""

    steps: int = 2000
    batch_size: int = 256
    lr: float = 5e-4
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"steps and batch_size must be >= 1 and lr > 0, got {self}")


def fit_classifier(
    model: nn.Module,
    inputs: Callable[[np.ndarray], Tensor],
    rows: np.ndarray,
    targets: np.ndarray,
    cfg: FitConfig,
    seed: int,
    device: torch.device,
    desc: str = "fit",
) -> dict[str, float]:
    """Train ``model`` to map ``inputs(rows[i])`` to ``targets[i]`` (int64 [M]) by cross-entropy.

    Minibatches are drawn from seeded per-epoch permutations of the M rows (an epoch shorter than a batch
    is repeated). Returns the loss and accuracy of the last 50 steps."""
    if len(rows) == 0 or len(rows) != len(targets):
        raise ValueError(
            f"{desc}: need as many targets as rows (> 0), got {len(rows)} rows, {len(targets)} targets"
        )
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    order, pos = rng.permutation(len(rows)), 0
    losses, hits = [], []
    targets_t = torch.as_tensor(targets, dtype=torch.int64)
    for _ in tqdm(range(cfg.steps), desc=desc, unit="step", leave=False, mininterval=2.0):
        if pos + cfg.batch_size > len(order):  # next epoch (small sets: several epochs per batch)
            order = np.concatenate(
                [order[pos:], *(rng.permutation(len(rows)) for _ in range(1 + cfg.batch_size // len(rows)))]
            )
            pos = 0
        idx = order[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        logits = model(inputs(rows[idx]).to(device))
        y = targets_t[idx].to(device)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        hits.append(float((logits.argmax(-1) == y).float().mean()))
    model.eval()
    return {"loss": float(np.mean(losses[-50:])), "train_accuracy": float(np.mean(hits[-50:]))}


@torch.no_grad()
def predict(
    model: nn.Module,
    inputs: Callable[[np.ndarray], Tensor],
    rows: np.ndarray,
    device: torch.device,
    batch: int = 1024,
) -> np.ndarray:
    """Class probabilities float32 [M, A] of ``inputs(rows)``, in batches, in eval mode."""
    model.to(device).eval()
    out = [
        torch.softmax(model(inputs(rows[i : i + batch]).to(device)).float(), -1).cpu()
        for i in range(0, len(rows), batch)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def accuracy(probs: np.ndarray, targets: np.ndarray) -> float:
    """Share of rows whose most likely class is the target (nan for no rows)."""
    return float((probs.argmax(-1) == targets).mean()) if len(targets) else float("nan")
