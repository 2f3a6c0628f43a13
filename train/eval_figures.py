"""Figures of ``train/evaluate.py`` that need a model: controllable generation (paper Fig. 6) and latent
actions in 2D coloured by the ground-truth action (Fig. 5). Rendering lives in ``train/eval_report.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model.latents import FAMILIES
from train import eval_report
from train.config import EvalConfig
from train.rollouts import decode_features


def chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def figures_for(run, features, data, tokenizer, fsq, grid, out_dir: Path, gen) -> list[str]:
    """Fig. 6 (controllable generation) and Fig. 5 (latent actions in 2D) for one run, where they apply."""
    ec, model, written = run.cfg.eval, run.model, []
    name = f"{run.cfg.data.dataset}-{run.path.name}"
    if ec.control and model.factored:
        written.append(str(control_grid(run, features[:1], tokenizer, fsq, grid, out_dir, gen)))
    if ec.latent_plot and "actions" in data and model.latent in FAMILIES:
        points, labels = latent_points(run, features, data, ec)
        if points is not None:
            path = out_dir / "figures" / f"{name}-latent-actions.png"
            title = f"{run.label} latent actions, coloured by ground-truth action"
            written.append(
                str(eval_report.latent_scatter(points, labels, data["action_names"], title, path, ec.seed))
            )
    return [str(Path(p).relative_to(out_dir)) for p in written]


def control_grid(run, features, tokenizer, fsq, grid, out_dir: Path, gen) -> Path:
    """Paper Fig. 6 on one clip: the inferred rollout, then one row per slot k whose latent actions are
    replaced by prior samples (or ``eval.control_vector``), the other slots keeping their inferred ones."""
    ec, model = run.cfg.eval, run.model
    c = ec.context_frames
    f = features.to(next(model.parameters()).device)
    base = model.infer_actions(f)[:, c - 1 :]  # [1, n, K, A]
    rows, labels = [decode_features(tokenizer, f[:, c:], grid)[0]], ["ground truth (recon)"]
    variants = [("inferred actions", base)]
    for k in range(base.shape[2]):
        actions = base.clone()
        if ec.control_vector:
            vector = torch.tensor(ec.control_vector, dtype=base.dtype, device=base.device)
            if vector.numel() != base.shape[-1]:
                raise ValueError(
                    f"eval.control_vector has {vector.numel()} numbers, {run.label}'s A is {base.shape[-1]}"
                )
            actions[:, :, k] = vector
        else:
            actions[:, :, k] = model.sample_prior_actions(1, base.shape[1], generator=gen)[:, :, k].to(
                base.device
            )
        variants.append((f"slot {k} {'given' if ec.control_vector else 'sampled'}", actions))
    for label, actions in variants:
        pred = model.rollout(f[:, :c], actions, snap=fsq.snap)
        rows.append(decode_features(tokenizer, pred, grid)[0])
        labels.append(label)
    path = out_dir / "figures" / f"{run.cfg.data.dataset}-{run.path.name}-control.png"
    eval_report.filmstrip([r.cpu() for r in rows], labels, path)
    return path


def latent_points(run, features, data, ec: EvalConfig) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Latent actions and the ground-truth action each stands for: ([P, A], [P]).

    One actor (Procgen): every transition's latent (all slots concatenated) with the player's action.
    Several agents (MultiGrid) and a slot model: slot sigma_t(j) of each agent j, matched per frame by the
    DCI probe on agent positions, with agent j's action. A scene latent of several agents: None."""
    model, device = run.model, next(run.model.parameters()).device
    parts = chunks(len(features), ec.batch_clips)
    z = torch.cat([model.infer_actions(features[sl].to(device)).cpu() for sl in parts])  # [W, L-1, K', A]
    actions = data["actions"][:, :-1]
    if actions.ndim == 2:
        return z.flatten(2).flatten(0, 1).numpy(), actions.flatten().numpy()
    if not (model.factored and "positions" in data):
        return None, None
    from train.dci import fit_probe, match_slots, positions_to_labels

    slots = torch.cat([model.slots(features[sl].to(device)).cpu() for sl in parts])[:, :-1]  # frames t
    positions = data["positions"][:, :-1]
    grid = tuple(int(v) + 1 for v in data["positions"].flatten(0, 2).max(0).values)
    labels = positions_to_labels(positions.flatten(0, 1), grid)  # [F, M]
    flat = slots.flatten(0, 1)
    probe = fit_probe(flat, labels, grid[0] * grid[1], seed=ec.seed)
    logp = probe(flat).log_softmax(-1)  # [F, K, G]
    cost = -logp.gather(-1, labels[:, None, :].expand(-1, flat.shape[1], -1))  # [F, K, M]
    sigma = match_slots(cost)  # [F, M] slot of each agent
    z_agents = z.flatten(0, 1).gather(1, sigma[..., None].expand(-1, -1, z.shape[-1]))  # [F, M, A]
    return z_agents.flatten(0, 1).numpy(), actions.flatten(0, 1).flatten().numpy()
