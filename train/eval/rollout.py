"""The rollout protocol shared by training-time validation and evaluation (paper appendix C.1).

Real frames are tokenized and their codes mapped to the exact FSQ vectors (``encode_windows``, through
``Tokenizer.codes_to_features``); a model infers its latent actions from the whole ground-truth window
(the World Model reads the recorded actions), rolls out ``n`` frames autoregressively from the first
``context`` ones (every prediction snapped onto the FSQ grid and fed back: ``rollout``), and the frozen
decoder renders the predicted features (``decode_tokens``). The reference rows decode the same way: Recon
is the ground-truth codes of the future frames, Copy the last context frame held (``held``), so a model
that predicts the true future codes scores exactly Recon and one that repeats the last frame exactly Copy.

Axes: W windows, B a batch of them, T = c + n frames (c context, n rollout steps), N tokens per frame,
F = FSQ width, H W pixels.
"""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange

from model.tokenizer import Tokenizer, to_float


def chunks(n: int, size: int) -> list[slice]:
    """Slices of ``size`` (the last one shorter) covering ``range(n)``."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def evenly_spaced(n_items: int, n: int) -> list[int]:
    """Up to ``n`` distinct indices spread evenly over ``range(n_items)``, first and last included."""
    return sorted({int(i) for i in np.linspace(0, n_items - 1, min(n, n_items))})


@torch.no_grad()
def encode_windows(tokenizer: Tokenizer, frames: torch.Tensor, batch: int, device) -> torch.Tensor:
    """uint8 frames [W, T, H, W, 3] -> FSQ features [W, T, N, F] on the CPU, ``batch`` windows at a time."""
    out = []
    for sl in chunks(len(frames), batch):
        codes = tokenizer.encode(to_float(frames[sl]).to(device))
        out.append(tokenizer.codes_to_features(codes).flatten(2, 3).cpu())
    return torch.cat(out)


def decode_tokens(tokenizer: Tokenizer, features: torch.Tensor) -> torch.Tensor:
    """FSQ vectors (or a model's predictions of them) [B, T, N, F] -> frames float [B, T, 3, H, W] in
    [-1, 1], decoded as given."""
    g = tokenizer.cfg.grid_size
    return tokenizer.decode_features(rearrange(features, "b t (h w) f -> b t h w f", h=g, w=g))


@torch.no_grad()
def rollout(
    model,
    features: torch.Tensor,
    context: int,
    snap,
    gt_actions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Predicted features [B, n, N, F] of frames ``context..T-1`` of ``features`` [B, T, N, F]: latent
    actions inferred from the whole window (``gt_actions`` [B, T(, M)]: what the World Model reads), then
    an autoregressive rollout from the first ``context`` frames, each prediction ``snap``ped and fed back."""
    actions = model.infer_actions(features, gt_actions)
    return model.rollout(features[:, :context], actions[:, context - 1 :], snap=snap)


def held(features: torch.Tensor, context: int) -> torch.Tensor:
    """The Copy row's features: the last context frame of ``features`` [B, T, N, F] held for the
    ``T - context`` future frames -> [B, T - context, N, F]."""
    n = features.shape[1] - context
    return features[:, context - 1 : context].expand(-1, n, -1, -1)


@torch.no_grad()
def batched(fn, features: torch.Tensor, batch: int, device) -> torch.Tensor:
    """``fn`` (a model method) over ``features`` [W, ...] ``batch`` windows at a time on ``device``,
    concatenated on the CPU."""
    return torch.cat([fn(features[sl].to(device)).cpu() for sl in chunks(len(features), batch)])
