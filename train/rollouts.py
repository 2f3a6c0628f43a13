"""n-step rollouts decoded by the frozen tokenizer: scores and videos for validation and evaluation.

Latent actions are inferred from ground-truth features, the model rolls out n steps autoregressively
from the first frame (predictions snapped onto the FSQ grid and fed back), and both the rollout and the
ground-truth codes go through the frozen decoder. Training-time validation scores the rollout against
the decoded ground-truth codes (the token cache holds no pixels; the tokenizer's own error against real
pixels is the Recon report written by precompute).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from model.fsq import FSQ
from model.metrics import psnr, ssim, to_unit
from model.tokenizer import Tokenizer, to_uint8
from shards.tokens import TokenCache, TokenWindows, cache_dir


def decode_features(tokenizer: Tokenizer, features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """FSQ vectors [B, T, N, F] -> frames float [B, T, 3, H, W] in [-1, 1]."""
    h, w = grid
    return tokenizer.decode_features(rearrange(features, "b t (h w) f -> b t h w f", h=h, w=w))


@torch.no_grad()
def rollout_frames(
    model,
    tokenizer: Tokenizer,
    fsq: FSQ,
    features: torch.Tensor,
    grid: tuple[int, int],
    actions: torch.Tensor | None = None,
    gt_actions: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Roll out frames 1..T-1 of ``features`` [B, T, N, F] from frame 0.

    ``actions`` [B, T-1, K, A] defaults to the model's inference from the ground truth (``gt_actions``,
    the clip's recorded actions [B, T(, M)], are what the World Model's "inference" reads). Returns
    ``pred`` and ``target`` (decoded ground-truth codes) frames [B, T-1, 3, H, W] in [-1, 1] and the
    predicted features [B, T-1, N, F].
    """
    if actions is None:
        actions = model.infer_actions(features, gt_actions)
    pred_features = model.rollout(features[:, :1], actions, snap=fsq.snap)
    return {
        "pred": decode_features(tokenizer, pred_features, grid),
        "target": decode_features(tokenizer, features[:, 1:], grid),
        "pred_features": pred_features,
    }


def evenly_spaced(n_items: int, n: int) -> list[int]:
    return sorted({int(i) for i in np.linspace(0, n_items - 1, min(n, n_items))})


def write_gif(columns: list[torch.Tensor], path: Path, fps: float = 4.0) -> Path:
    """Side-by-side video: each column float [B, T, 3, H, W] in [-1, 1]; rows are the B clips."""
    from PIL import Image

    frames = torch.cat([torch.cat(list(c), dim=-2) for c in columns], dim=-1)  # [T, 3, B*H, cols*W]
    images = [Image.fromarray(f.numpy()) for f in to_uint8(frames.float().cpu())]
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path


@torch.no_grad()
def rollout_validation(
    model,
    tokenizer: Tokenizer,
    fsq: FSQ,
    cfg,
    tokenizer_id: str,
    device: torch.device,
    video_dir: Path,
    step: int,
) -> dict[str, float]:
    """Val-split rollout PSNR/SSIM (vs decoded ground-truth codes) per step, plus a GIF; {} without val."""
    lt = cfg.lam_train
    split_dir = cache_dir(cfg.data.root, cfg.data.dataset, tokenizer_id, "val")
    if not (split_dir / "index.json").exists():
        return {}
    cache = TokenCache(split_dir)
    try:
        windows = TokenWindows(cache, lt.rollout_steps + 1, lt.rollout_steps + 1)
    except ValueError:
        return {}
    picks = evenly_spaced(len(windows), lt.val_clips)
    items = [windows[i] for i in picks]
    codes = torch.stack([item["codes"] for item in items]).to(device)
    gt_actions = None
    if "actions" in items[0]:
        gt_actions = torch.stack([item["actions"] for item in items]).to(device)
    features = fsq.indices_to_codes(codes).flatten(2, 3)
    was_training = model.training
    model.eval()
    out = rollout_frames(model, tokenizer, fsq, features, cache.info.grid, gt_actions=gt_actions)
    model.train(was_training)
    p = psnr(to_unit(out["pred"]), to_unit(out["target"])).clamp(max=100)  # [B, n]
    s = ssim(to_unit(out["pred"]), to_unit(out["target"]))
    # The floor: frame 0 (the context the rollout starts from, decoded) held still. out["target"] starts at
    # frame 1, so holding its first frame would score the first step as identical (100 dB).
    first = decode_features(tokenizer, features[:, :1], cache.info.grid).expand_as(out["target"])
    copy = psnr(to_unit(first), to_unit(out["target"])).clamp(max=100)
    scores = {
        "val/rollout_psnr": float(p.mean()),
        "val/rollout_ssim": float(s.mean()),
        "val/copy_first_psnr": float(copy.mean()),
    }
    scores.update({f"val_psnr_by_step/{i + 1}": float(v) for i, v in enumerate(p.mean(0))})
    write_gif([out["target"][:4].cpu(), out["pred"][:4].cpu()], video_dir / f"step-{step:07d}.gif")
    return scores


@torch.no_grad()
def score_against_pixels(
    model, tokenizer: Tokenizer, fsq: FSQ, frames: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Score an n-step rollout against real frames. frames: uint8 [B, T, H, W, 3] ground truth.

    The clip is tokenized, latent actions are inferred from its codes, the model rolls out frames
    1..T-1 from frame 0, and every row is compared with the real pixels: ``model`` (the rollout),
    ``recon`` (the tokenizer's own reconstruction: the ceiling) and ``copy`` (frame 0 held still: the
    floor). Returns per-frame PSNR/SSIM [B, T-1] for each, and the decoded frames for videos.
    """
    from model.tokenizer import to_float

    target = to_float(frames)  # [B, T, 3, H, W]
    codes = tokenizer.encode(target)
    features = fsq.indices_to_codes(codes).flatten(2, 3)
    h, w = codes.shape[-2:]
    out = rollout_frames(model, tokenizer, fsq, features, (h, w))
    real = to_unit(target[:, 1:])
    rows = {"model": out["pred"], "recon": out["target"], "copy": target[:, :1].expand_as(target[:, 1:])}
    scores: dict[str, torch.Tensor] = {}
    for name, video in rows.items():
        scores[f"{name}_psnr"] = psnr(to_unit(video), real).clamp(max=100)
        scores[f"{name}_ssim"] = ssim(to_unit(video), real)
    return {**scores, "frames": {"truth": target[:, 1:], **rows}}
