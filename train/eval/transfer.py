"""Leakage and transfer tests of latent actions (paper 003, Garrido et al.), on cached tokens.

Axes: W windows, L frames per window, N tokens, F FSQ width, K' latents per transition (K slots, or 1 for a
scene latent), A latent size, M agents. Errors are mean squared errors in FSQ-feature space (no decoding).

- **Scene cut** (does the latent copy the future?). Stitch two windows of different episodes at frame c:
  [a_0 .. a_{c-1}, b_c ..]. The IDM infers the latent of the cut transition a_{c-1} -> b_c, and the model
  predicts b_c from a's context with it. A latent that carries the next frame predicts the cut as well as
  an ordinary transition; an honest latent (the change an agent makes) cannot, and its error at least
  doubles (the paper's criterion: ``cut / normal >= 2``; ``leaks`` is set below it). ``copy`` is the error of
  holding a_{c-1}: how far the cut moves the scene.
- **Cycle consistency** (do latents transfer?). For every transition t of window a: infer z_a; apply it to
  window b's frame t (b' = f(b_t, z_a)); infer the latent of (b_t, b'); apply that back to a_t. The cycle
  error against a_{t+1}, over the direct error (z_a applied to a_t), is ``ratio`` (1 = lossless transfer).
  For a factored model the transfer is per slot: the latent of the slot holding agent j in a moves onto the
  slot holding agent j in b (slot-agent matching, ``train/eval/agent_slots.py``), and back; slots holding no
  agent keep their own clip's latents. Without agent positions (Procgen) slot k moves onto slot k.

Models driven by ground-truth actions or without latent actions are skipped. Pairs: window i with the
first window from another episode at or after i + W/2 (cyclically), so the pairing is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.fsq import FSQ
from model.latents import FAMILIES
from shards.tokens import TokenCache
from train.batches import TokenWindows
from train.eval.agent_slots import agent_slots

LEAK_RATIO = 2.0  # the paper: an honest model's error "more than doubles" at a scene cut


@dataclass
class Windows:
    """Cached windows: features [W, L, N, F], episodes int [W], positions [W, L, M, 2] or None."""

    features: torch.Tensor
    episodes: np.ndarray
    positions: torch.Tensor | None


def load_windows(split_dir, levels: tuple[int, ...], length: int, count: int) -> Windows:
    """Up to ``count`` (0 = all) non-overlapping windows of ``length`` frames of a token-cache split,
    evenly spread over it, in cache order."""
    cache = TokenCache(split_dir)
    windows = TokenWindows(cache, length, length)
    picks = np.arange(len(windows))
    if count and count < len(picks):
        picks = np.unique(np.linspace(0, len(windows) - 1, count).round().astype(np.int64))
    items = [windows[int(i)] for i in picks]
    episodes = np.array([cache.clip(int(windows.items[i][0]))["episode"] for i in picks])
    codes = torch.stack([item["codes"] for item in items])  # [W, L, h, w]
    features = FSQ(levels).indices_to_codes(codes).flatten(2, 3)
    positions = torch.stack([item["positions"] for item in items]) if "positions" in items[0] else None
    return Windows(features, episodes, positions)


def pair_other_episodes(episodes: np.ndarray) -> np.ndarray:
    """For each window i the partner j (first window from another episode at or after i + W/2, cyclically)
    -> int [W]; a ValueError when every window comes from one episode."""
    w = len(episodes)
    out = np.empty(w, dtype=np.int64)
    for i in range(w):
        for step in range(w):
            j = (i + w // 2 + step) % w
            if episodes[j] != episodes[i]:
                out[i] = j
                break
        else:
            raise ValueError("the scene-cut and transfer tests need windows from at least two episodes")
    return out


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[W, ...] x2 -> [W]."""
    return (a.float() - b.float()).square().flatten(1).mean(1)


@torch.no_grad()
def scene_cut(model, a: torch.Tensor, b: torch.Tensor, cut: int) -> dict[str, torch.Tensor]:
    """a, b: features [W, L, N, F] of different episodes, 1 <= cut < L -> per-window errors [W]: ``normal``
    (a's own transition cut-1 -> cut), ``cut`` (the stitched transition a_{cut-1} -> b_cut), ``copy``."""
    stitched = torch.cat([a[:, :cut], b[:, cut : cut + 1]], 1)  # [W, cut + 1, N, F]
    pred_cut = model.rollout(stitched[:, :cut], model.infer_actions(stitched)[:, -1:])[:, 0]
    own = a[:, : cut + 1]
    pred = model.rollout(own[:, :cut], model.infer_actions(own)[:, -1:])[:, 0]
    return {
        "normal": _mse(pred, a[:, cut]),
        "cut": _mse(pred_cut, b[:, cut]),
        "copy": _mse(a[:, cut - 1], b[:, cut]),
    }


def _move(dst: torch.Tensor, src: torch.Tensor, dst_slot: torch.Tensor, src_slot: torch.Tensor):
    """dst, src: latents [W, K, A]; dst_slot, src_slot: int [W, M] -> dst with dst[w, dst_slot[w, j]] =
    src[w, src_slot[w, j]] for every agent j."""
    out = dst.clone()
    a = src.shape[-1]
    moved = src.gather(1, src_slot[..., None].expand(-1, -1, a))
    return out.scatter(1, dst_slot[..., None].expand(-1, -1, a), moved)


@torch.no_grad()
def cycle_consistency(
    model,
    a: torch.Tensor,
    b: torch.Tensor,
    slots_a: torch.Tensor | None = None,
    slots_b: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """a, b: features [W, L, N, F]; slots_a / slots_b: int [W, L, M] slot of each agent per frame (factored
    models; None: slot k <-> slot k) -> per-window errors averaged over the L-1 transitions [W]:
    ``direct`` (z_a on a_t) and ``cycle`` (a -> b -> a, see the module docstring)."""
    z_a = model.infer_actions(a)  # [W, L-1, K', A]
    z_b = model.infer_actions(b)
    direct, cycle = [], []
    for t in range(a.shape[1] - 1):
        za_t = z_a[:, t]
        to_b = za_t if slots_a is None else _move(z_b[:, t], za_t, slots_b[:, t], slots_a[:, t])
        b_next = model.rollout(b[:, : t + 1], to_b[:, None])  # [W, 1, N, F]
        z_back = model.infer_actions(torch.cat([b[:, : t + 1], b_next], 1))[:, -1]
        if slots_a is not None:
            z_back = _move(za_t, z_back, slots_a[:, t], slots_b[:, t])
        target = a[:, t + 1]
        cycle.append(_mse(model.rollout(a[:, : t + 1], z_back[:, None])[:, 0], target))
        direct.append(_mse(model.rollout(a[:, : t + 1], za_t[:, None])[:, 0], target))
    return {"direct": torch.stack(direct, 1).mean(1), "cycle": torch.stack(cycle, 1).mean(1)}


def transfer_tests(
    model,
    data: Windows,
    cells: tuple[int, int] | None,
    tokens: tuple[int, int],
    batch: int,
    device: torch.device,
) -> dict | None:
    """Both tests on ``data`` for one model -> scores (means over windows) or None for models without
    latent actions. The cut sits mid-window."""
    if model.latent not in FAMILIES:
        return None
    feats = data.features
    length = feats.shape[1]
    if length < 2:
        raise ValueError("the transfer tests need windows of at least 2 frames")
    partner = torch.from_numpy(pair_other_episodes(data.episodes))
    per_slot = model.factored and data.positions is not None and cells is not None
    parts: dict[str, list[torch.Tensor]] = {}
    for lo in range(0, len(feats), batch):
        idx = torch.arange(lo, min(lo + batch, len(feats)))
        a, b = feats[idx].to(device), feats[partner[idx]].to(device)
        out = scene_cut(model, a, b, cut=max(1, length // 2))
        slots_a = slots_b = None
        if per_slot:
            slots_a = agent_slots(model, a, data.positions[idx], cells, tokens)
            slots_b = agent_slots(model, b, data.positions[partner[idx]], cells, tokens)
        out.update(cycle_consistency(model, a, b, slots_a, slots_b))
        for k, v in out.items():
            parts.setdefault(k, []).append(v.cpu())
    mean = {k: float(torch.cat(v).mean()) for k, v in parts.items()}
    ratio = _ratio(mean["cut"], mean["normal"])
    return {
        "windows": len(feats),
        "window_frames": length,
        "scene_cut": {
            "normal_mse": mean["normal"],
            "cut_mse": mean["cut"],
            "copy_mse": mean["copy"],
            "ratio": ratio,
            "leaks": ratio < LEAK_RATIO,
        },
        "cycle": {
            "direct_mse": mean["direct"],
            "cycle_mse": mean["cycle"],
            "ratio": _ratio(mean["cycle"], mean["direct"]),
            "per_slot": per_slot,
        },
    }


def _ratio(x: float, y: float, eps: float = 1e-12) -> float:
    """x / y with both errors lifted by eps: two exact predictions (0 / 0) are a ratio of 1."""
    return (x + eps) / (y + eps)


def transfer_table(results: dict[str, dict]) -> str:
    """Markdown: one row per model of {label: transfer_tests output}."""
    lines = [
        "| Model | one-step MSE | at a scene cut | cut / normal (>= 2: honest) | cycle MSE | cycle / direct "
        "| transfer |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in results.items():
        cut, cyc = r["scene_cut"], r["cycle"]
        verdict = "**leaks**" if cut["leaks"] else "ok"
        how = "per slot (matched agents)" if cyc["per_slot"] else "whole latent"
        lines.append(
            f"| {label} | {cut['normal_mse']:.4g} | {cut['cut_mse']:.4g} | {cut['ratio']:.2f} ({verdict}) "
            f"| {cyc['cycle_mse']:.4g} | {cyc['ratio']:.2f} | {how} |"
        )
    return "\n".join(lines)


def transfer_scores(run, tokenizer_id: str, levels, tokens: tuple[int, int], device: torch.device) -> dict:
    """``transfer_tests`` of one evaluated run (``train/evaluate.py``'s Run) on its ``eval.split`` cache."""
    from shards.tokens import cache_dir
    from train.eval.agent_slots import grid_cells

    cfg, ec = run.cfg, run.cfg.eval
    split_dir = cache_dir(cfg.data.root, cfg.data.dataset, tokenizer_id, ec.split)
    data = load_windows(split_dir, tuple(levels), ec.transfer_frames, ec.transfer_windows)
    out = transfer_tests(run.model, data, grid_cells(cfg.dataset_dir), tokens, ec.batch_clips, device)
    return out or {}


def write_transfer_report(results: dict[str, dict], out_dir) -> None:
    """``<out>/transfer.md`` from the ``transfer`` entries of ``train/evaluate.py``'s results (if any)."""
    from pathlib import Path

    blocks = []
    for name, r in results.items():
        table = {label: t for label, t in r.get("transfer", {}).items() if t}
        if not table:
            continue
        some = next(iter(table.values()))
        blocks += [
            f"## {name}",
            "",
            transfer_table(table),
            "",
            f"{some['windows']} windows of {some['window_frames']} cached {r['split']} frames; MSE in FSQ-"
            "feature space. Scene cut: two windows of different episodes stitched mid-window; an honest "
            f"latent's error at the cut is at least {LEAK_RATIO:g}x its normal one-step error. Cycle: "
            "latents of one window applied to another, re-inferred there and applied back (1.00 = lossless).",
            "",
        ]
    if blocks:
        text = "# Leakage and transfer of latent actions (paper 003)\n\n" + "\n".join(blocks)
        (Path(out_dir) / "transfer.md").write_text(text)
