"""Finite scalar quantisation (FSQ, Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple").

Each of the D = len(levels) channels is bounded with a tanh and rounded to one of ``levels[i]`` integer
values; a code is the D-tuple of those values, normalised to [-1, 1]. There is no learned codebook, so
no codebook loss, commitment loss or dead-code restarts: the implicit codebook is the full grid of
``prod(levels)`` points, and an index is the code's mixed-radix number (basis = cumprod of levels).

Grid per channel with L = levels[i] and half_width = L // 2: the integers
``{-half_width, ..., L - 1 - half_width}`` divided by half_width, i.e. odd L -> symmetric
{-1, ..., 1}; even L -> {-1, ..., 1 - 1/half_width} (e.g. L=4 -> {-1, -0.5, 0, 0.5}). Every grid value
k / half_width is computed by the same division in ``forward`` and ``indices_to_codes``, so codes are
bit-identical whichever way they were made, and ``codes -> indices -> codes`` is exact.

Numerics: the whole module runs in fp32 with autocast disabled. Under bf16 (8 mantissa bits) the
bounded value ``tanh(.) * half_l - offset`` rounds onto the wrong integer or past the grid edge, which
loses codes and can produce indices outside [0, codebook_size).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def round_ste(x: Tensor) -> Tensor:
    """Round with a straight-through gradient (identity).

    Written as ``(x - x.detach()) + round(x).detach()`` rather than ``x + (round(x) - x).detach()``: the
    first term is exactly 0, so the forward value is exactly ``round(x)`` (the usual form can be off by
    one ulp, which would break the exact code <-> index round trip).
    """
    return (x - x.detach()) + x.detach().round()


class FSQ(nn.Module):
    """Finite scalar quantiser over the last axis.

    Args:
        levels: number of values per channel, each >= 2; D = len(levels), codebook_size = prod(levels).
        eps: small stretch of the tanh bound past the outer grid values (see ``bound``).
    """

    def __init__(self, levels: Sequence[int], eps: float = 1e-3) -> None:
        super().__init__()
        levels = tuple(int(level) for level in levels)
        if not levels or min(levels) < 2:
            raise ValueError(f"FSQ levels must be a non-empty sequence of integers >= 2, got {levels}")
        self.levels = levels
        self.dim = len(levels)
        self.codebook_size = math.prod(levels)
        if self.codebook_size > 2**62:
            raise ValueError(f"FSQ codebook_size {self.codebook_size} does not fit int64 indices")
        self.eps = eps
        lv = torch.tensor(levels, dtype=torch.int64)
        basis = torch.cumprod(torch.tensor((1, *levels[:-1]), dtype=torch.int64), dim=0)
        # Buffers are not persistent: they are a pure function of `levels`, which lives in the config.
        self.register_buffer("_levels", lv, persistent=False)
        self.register_buffer("_basis", basis, persistent=False)
        self.register_buffer("_half_width", (lv // 2).to(torch.float32), persistent=False)

    def extra_repr(self) -> str:
        return f"levels={list(self.levels)}, codebook_size={self.codebook_size}"

    def bound(self, z: Tensor) -> Tensor:
        """Squash fp32 z [..., D] per channel into an interval that rounds onto exactly L integers,
        {-half_width, ..., L - 1 - half_width}. Even L needs the half-offset: its grid is asymmetric."""
        levels = self._levels.to(torch.float32)
        # (1 + eps) lets the tanh reach the outer integers before saturating, and overshoots them by
        # < 0.5 so rounding never leaves the grid; it also keeps atanh(offset / half_l) finite for L=2.
        half_l = (levels - 1) * (1 + self.eps) / 2
        offset = torch.where(self._levels % 2 == 1, 0.0, 0.5)
        # atanh (the paper writes tan) makes bound(0) == 0 exactly.
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z: float [..., D] -> (z_q: fp32 [..., D] on the grid in [-1, 1], indices: int64 [...]).

        Gradients pass straight through the rounding to z (through the tanh bound).
        """
        self._check_dim(z)
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            z_int = round_ste(self.bound(z))  # integers in [-half_width, L - 1 - half_width]
            z_q = z_int / self._half_width
            indices = self._int_to_indices(z_int.detach())
        return z_q, indices

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """codes: float [..., D] on the grid -> indices: int64 [...] in [0, codebook_size)."""
        self._check_dim(codes)
        with torch.autocast(device_type=codes.device.type, enabled=False):
            # round() absorbs float error for levels whose half_width is not a power of two.
            z_int = (codes.float() * self._half_width).round()
        return self._int_to_indices(z_int)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """indices: integer [...] in [0, codebook_size) -> codes: fp32 [..., D] on the grid."""
        if indices.is_floating_point() or indices.is_complex():
            raise TypeError(f"FSQ indices must be an integer tensor, got {indices.dtype}")
        digits = (indices.long().unsqueeze(-1) // self._basis) % self._levels  # [..., D] in [0, L)
        z_int = digits.to(torch.float32) - self._half_width
        return z_int / self._half_width

    def snap(self, x: Tensor) -> Tensor:
        """Nearest grid code for arbitrary features x [..., D] (e.g. a world model's predicted features):
        clamp to the grid's range and round. Identity on valid codes. fp32 out."""
        self._check_dim(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            lo = -self._half_width
            hi = self._levels.to(torch.float32) - 1 - self._half_width
            z_int = torch.minimum(torch.maximum((x.float() * self._half_width).round(), lo), hi)
            return z_int / self._half_width

    def _int_to_indices(self, z_int: Tensor) -> Tensor:
        # Shift [-hw, L-1-hw] -> [0, L) digits, then mixed radix. long() after round() is exact.
        digits = (z_int + self._half_width).long()
        return (digits * self._basis).sum(dim=-1)

    def _check_dim(self, x: Tensor) -> None:
        if x.shape[-1] != self.dim:
            raise ValueError(
                f"FSQ with levels {list(self.levels)} expects last axis {self.dim}, "
                f"got shape {tuple(x.shape)}"
            )


def code_counts(indices: Tensor, codebook_size: int) -> Tensor:
    """indices: integer [...] -> int64 [codebook_size] histogram. Sum these across steps/ranks
    (all_reduce) before ``usage_from_counts`` to get usage over more than one batch."""
    flat = indices.reshape(-1).long()
    if flat.numel() and (flat.min() < 0 or flat.max() >= codebook_size):
        raise ValueError(
            f"indices outside [0, {codebook_size}): min {int(flat.min())}, max {int(flat.max())}"
        )
    return torch.bincount(flat, minlength=codebook_size)


def usage_from_counts(counts: Tensor) -> dict[str, Tensor]:
    """counts: [codebook_size] -> scalar fp32 metrics.

    ``used_fraction``: share of codes seen at least once (1 - dead-code fraction);
    ``perplexity``: exp(entropy) of the empirical code distribution, i.e. the effective number of codes
    in use (codebook_size when uniform, 1 when collapsed). An empty histogram gives zeros.
    """
    counts = counts.to(torch.float64)  # float64: entropy over large histograms without drift
    total = counts.sum()
    p = counts / total.clamp_min(1)
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum()
    used = (counts > 0).sum()
    perplexity = torch.where(total > 0, entropy.exp(), torch.zeros_like(entropy))
    return {
        "used_fraction": (used / counts.numel()).float(),
        "perplexity": perplexity.float(),
    }


def codebook_usage(indices: Tensor, codebook_size: int) -> dict[str, Tensor]:
    """indices: integer [...] -> {"used_fraction", "perplexity"} for this batch (see usage_from_counts)."""
    return usage_from_counts(code_counts(indices, codebook_size))
