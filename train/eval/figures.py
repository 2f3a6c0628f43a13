"""Figures of ``train/evaluate.py``: controllable generation (paper Fig. 6), latent actions in 2D coloured by
the ground-truth action (Fig. 5) and slot-agent assignments (Figs. 7-9). Filmstrips and GIFs are drawn by
``train/visuals.py``, plots here with matplotlib."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model.latents import FAMILIES
from train.config import EvalConfig
from train.eval.rollout import batched, decode_tokens
from train.visuals import filmstrip


def figures_for(run, features, data, tokenizer, out_dir: Path, gen) -> list[str]:
    """Fig. 6 (controllable generation) and Fig. 5 (latent actions in 2D) for one run, where they apply."""
    ec, model, written = run.cfg.eval, run.model, []
    name = f"{run.cfg.data.dataset}-{run.path.name}"
    if ec.control and model.factored:
        written.append(str(control_grid(run, features[:1], tokenizer, out_dir, gen)))
    if ec.latent_plot and "actions" in data and model.latent in FAMILIES:
        points, labels = latent_points(run, features, data, ec)
        if points is not None:
            path = out_dir / "figures" / f"{name}-latent-actions.png"
            title = f"{run.label} latent actions, coloured by ground-truth action"
            written.append(str(latent_scatter(points, labels, data["action_names"], title, path, ec.seed)))
    return [str(Path(p).relative_to(out_dir)) for p in written]


def control_grid(run, features, tokenizer, out_dir: Path, gen) -> Path:
    """Paper Fig. 6 on one clip: the inferred rollout, then one row per slot k whose latent actions are
    replaced by prior samples (or ``eval.control_vector``), the other slots keeping their inferred ones."""
    ec, model = run.cfg.eval, run.model
    c = ec.context_frames
    f = features.to(next(model.parameters()).device)
    base = model.infer_actions(f)[:, c - 1 :]  # [1, n, K, A]
    rows, labels = [decode_tokens(tokenizer, f[:, c:])[0]], ["ground truth (recon)"]
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
        pred = model.rollout(f[:, :c], actions, snap=tokenizer.fsq.snap)
        rows.append(decode_tokens(tokenizer, pred)[0])
        labels.append(label)
    path = out_dir / "figures" / f"{run.cfg.data.dataset}-{run.path.name}-control.png"
    filmstrip([r.cpu() for r in rows], labels, path)
    return path


def latent_points(run, features, data, ec: EvalConfig) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Latent actions and the ground-truth action each stands for: ([P, A], [P]).

    One actor (Procgen): every transition's latent (all slots concatenated) with the player's action.
    Several agents (MultiGrid) and a slot model: slot sigma_t(j) of each agent j, matched per frame by the
    DCI probe on agent positions, with agent j's action. A scene latent of several agents: None."""
    model, device = run.model, next(run.model.parameters()).device
    z = batched(model.infer_actions, features, ec.batch_clips, device)  # [W, L-1, K', A]
    actions = data["actions"][:, :-1]
    if actions.ndim == 2:
        return z.flatten(2).flatten(0, 1).numpy(), actions.flatten().numpy()
    if not (model.factored and "positions" in data):
        return None, None
    from train.eval.dci import fit_probe, match_slots, positions_to_labels

    slots = batched(model.slots, features, ec.batch_clips, device)[:, :-1]  # frames t
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


def embed_2d(points: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """[P, A] -> ([P, 2], method): UMAP when ``umap-learn`` is installed, else PCA."""
    try:
        import umap  # optional: pulls numba; its first fit JIT-compiles for tens of seconds
    except ImportError:
        centred = points - points.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        return centred @ vt[:2].T, "PCA"
    return umap.UMAP(n_components=2, random_state=seed).fit_transform(points), "UMAP"


def latent_scatter(
    points: np.ndarray, actions: np.ndarray, action_names: list[str], title: str, path: Path, seed: int = 0
) -> Path:
    """Latent actions [P, A] in 2D coloured by their ground-truth action ids [P] (paper Fig. 5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xy, method = embed_2d(points.astype(np.float64), seed)
    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=120)
    for a in np.unique(actions):
        mask = actions == a
        name = action_names[a] if a < len(action_names) else str(a)
        ax.scatter(xy[mask, 0], xy[mask, 1], s=4, alpha=0.6, label=name)
    ax.set_title(f"{title} ({method})", fontsize=9)
    ax.legend(markerscale=3, fontsize=7, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def assignment_figure(owners: torch.Tensor, sharing: list[list[float]], title: str, path: Path) -> Path:
    """Slot-agent assignment (paper Figs. 7-9): for a few clips, the slot owning each agent in every frame
    (rows = agents, columns = frames, colour = slot), and how often two agents share a slot.
    owners int [C, T, M]; sharing [M][M]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clips, _, agents = owners.shape
    fig, axes = plt.subplots(1, clips + 1, figsize=(2.4 * (clips + 1), 2.4), dpi=120)
    slots = int(owners.max()) + 1
    for c in range(clips):
        ax = axes[c]
        ax.imshow(owners[c].T.numpy(), cmap="tab10", vmin=0, vmax=9, aspect="auto", interpolation="nearest")
        ax.set_title(f"clip {c}: owner slot", fontsize=8)
        ax.set_xlabel("frame", fontsize=7)
        ax.set_yticks(range(agents), [f"agent {j}" for j in range(agents)], fontsize=7)
        ax.tick_params(axis="x", labelsize=6)
    ax = axes[-1]
    ax.imshow(np.asarray(sharing), cmap="viridis", vmin=0, vmax=1)
    for i in range(agents):
        for j in range(agents):
            ax.text(j, i, f"{sharing[i][j]:.2f}", ha="center", va="center", fontsize=6, color="white")
    ax.set_title("share of frames in one slot", fontsize=8)
    ax.set_xticks(range(agents))
    ax.set_yticks(range(agents))
    fig.suptitle(f"{title} ({slots} slots seen, colours = slot index)", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
