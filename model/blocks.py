"""Shared building blocks. All conv blocks take and return [N, C, H, W] (N = folded batch, e.g. B*T).

Conv blocks (frame tokenizer, ``model/tokenizer.py``):
- ``ImpalaResBlock``: IMPALA-CNN residual block (Espeholt et al. 2018), ReLU, no normalisation;
  ``impala_stages``: the IMPALA CNN's stages (conv, max-pool /2, residual blocks) as a layer list.
- ``ResBlock``: MAGVIT-v2 / Open-MAGVIT2 residual block, GroupNorm + SiLU, bias-free convs.
- ``AdaptiveGroupNorm``: MAGVIT-v2 decoder norm whose scale/shift come from the quantised latent.
- ``DepthToSpaceUpsample``: conv to 4x channels then depth-to-space (MAGVIT-v2's decoder upsampler).
- ``NearestUpsample``: nearest x2 then conv (no transposed-conv checkerboard).

Attention blocks (world models), on token sequences [B, L, D] (B = folded batch, L tokens, D width):
- ``Attention``: multi-head self- or cross-attention through ``F.scaled_dot_product_attention``.
- ``MLP``, ``TransformerLayer`` (pre-norm self-attn + MLP), ``CrossAttentionLayer`` (pre-norm
  cross-attn + MLP).
- ``SpatioTemporalBlock``: Genie's ST layer on [B, T, S, D] (spatial attn, causal temporal attn, MLP).
- ``sincos_pos_embed``: 2D sine-cosine table [N, D] to initialise learned token position embeddings.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F


class ImpalaResBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))), channels kept. [N, C, H, W] -> [N, C, H, W]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv1(F.relu(self.conv0(F.relu(x))))


def impala_stages(in_channels: int, channels: tuple[int, ...], num_res_blocks: int) -> list[nn.Module]:
    """Per stage: conv3x3 to the stage width, max-pool 3x3 stride 2 (halves H and W), residual blocks.
    A flat list so callers splice it into their own ``nn.Sequential`` (checkpoint keys stay flat)."""
    layers: list[nn.Module] = []
    for c in channels:
        layers += [nn.Conv2d(in_channels, c, 3, padding=1), nn.MaxPool2d(3, stride=2, padding=1)]
        layers += [ImpalaResBlock(c) for _ in range(num_res_blocks)]
        in_channels = c
    return layers


class ResBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm -> SiLU -> conv3x3) x 2, plus a 1x1 shortcut when the
    width changes. [N, C_in, H, W] -> [N, C_out, H, W]."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int) -> None:
        super().__init__()
        self.norm0 = nn.GroupNorm(num_groups, in_channels, eps=1e-6)
        self.conv0 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(num_groups, out_channels, eps=1e-6)
        self.conv1 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        same = in_channels == out_channels
        self.shortcut = nn.Identity() if same else nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        h = self.conv1(F.silu(self.norm1(h)))
        return self.shortcut(x) + h


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm(x) * gamma(std(z)) + beta(mean(z)), with per-channel spatial statistics of the
    quantised latent z (StyleGAN-style conditioning, as in MAGVIT-v2's decoder).

    x: [N, C, H, W], z: [N, Z, h, w] -> [N, C, H, W].
    """

    def __init__(self, z_channels: int, channels: int, num_groups: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(num_groups, channels, eps=eps, affine=False)
        self.gamma = nn.Linear(z_channels, channels)
        self.beta = nn.Linear(z_channels, channels)
        self.eps = eps

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        z = rearrange(z, "n c h w -> n c (h w)")
        # Biased variance: stays defined for a 1x1 latent grid.
        std = (z.var(dim=-1, correction=0) + self.eps).sqrt()  # [N, Z]
        scale = rearrange(self.gamma(std), "n c -> n c 1 1")
        shift = rearrange(self.beta(z.mean(dim=-1)), "n c -> n c 1 1")
        return self.norm(x) * scale + shift


class DepthToSpaceUpsample(nn.Module):
    """conv3x3 to 4C' channels, then rearrange each 2x2 channel group into space (C' = out_channels, default
    C). [N, C, H, W] -> [N, C', 2H, 2W]. Each output pixel of a 2x2 block has its own filters, so a decoder
    can draw a sprite's exact pixels from one code (nearest upsampling repeats a value over the block)."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 4 * (out_channels or channels), 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return rearrange(self.conv(x), "n (c r s) h w -> n c (h r) (w s)", r=2, s=2)


class NearestUpsample(nn.Module):
    """Nearest-neighbour x2 then conv3x3. [N, C_in, H, W] -> [N, C_out, 2H, 2W]."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# ----------------------------------------------------------------------------------------------------
# Attention blocks (world models: FLAM's factorizer, IDM, FDM, aggregator, and the baselines). All take
# token sequences [B, L, D] (B = any folded batch, L tokens, D width); pre-norm residual layers.


def _check_heads(dim: int, num_heads: int) -> None:
    if dim < 1 or num_heads < 1 or dim % num_heads:
        raise ValueError(f"attention dim {dim} must be a positive multiple of num_heads {num_heads}")


class Attention(nn.Module):
    """Multi-head scaled dot-product attention (``F.scaled_dot_product_attention``).

    Self-attention when ``context`` is None, else cross-attention from x (queries) to context
    (keys/values). One fused [3D, D] in-projection serves both: self-attention is a single matmul,
    cross-attention uses the q rows and the kv rows of the same weight (views, no copies).

    x: [B, L, D], context: [B, S, D] or None -> [B, L, D].
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        _check_heads(dim, num_heads)
        self.dim, self.num_heads, self.dropout = dim, num_heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: Tensor, context: Tensor | None = None, causal: bool = False, mask: Tensor | None = None
    ) -> Tensor:
        """causal: token i attends to tokens <= i (self-attention only). mask: optional bool [L, S]
        (or broadcastable to [B, heads, L, S]), True = may attend."""
        if context is None:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        else:
            if causal:
                raise ValueError("causal=True is for self-attention; pass a mask for cross-attention")
            w, b = self.qkv.weight, self.qkv.bias
            q = F.linear(x, w[: self.dim], b[: self.dim])
            k, v = F.linear(context, w[self.dim :], b[self.dim :]).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b l (h e) -> b h l e", h=self.num_heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(rearrange(out, "b h l e -> b l (h e)"))


class MLP(nn.Module):
    """Linear -> GELU -> Linear (-> dropout). [..., D] -> [..., D]."""

    def __init__(self, dim: int, hidden: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = hidden or 4 * dim
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x))))


class TransformerLayer(nn.Module):
    """Pre-norm self-attention + MLP: x + attn(LN x); x + mlp(LN x). [B, L, D] -> [B, L, D]."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: Tensor, causal: bool = False, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), causal=causal, mask=mask)
        return x + self.mlp(self.norm2(x))


class CrossAttentionLayer(nn.Module):
    """Pre-norm cross-attention + MLP: x + attn(LN x, LN context); x + mlp(LN x).
    x: [B, L, D], context: [B, S, D] -> [B, L, D]."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm_q(x), context=self.norm_kv(context), mask=mask)
        return x + self.mlp(self.norm2(x))


class SpatioTemporalBlock(nn.Module):
    """Genie's ST-transformer layer (Bruce et al. 2024): spatial self-attention among the S tokens of each
    frame, causal temporal self-attention along T for each spatial position, then an MLP on every token.

    x: [B, T, S, D] -> [B, T, S, D].

    ``spatial_frames`` (forward arg): only the first ``spatial_frames`` frames get spatial attention; the
    later ones skip it (None = all frames, the plain Genie block). FLAM's factored IDM/FDM stack
    [current slots, per-slot next value or action token] as T = 2 and use ``spatial_frames=1``: the
    current slots interact, while a slot's next/action token sees only its own slot's column through
    the temporal attention, and never the other slots' next values or actions.
    Tokens are not given spatial position embeddings here: with none added by the caller the block is
    permutation-equivariant over S (FLAM's slots).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_s = nn.LayerNorm(dim)
        self.spatial = Attention(dim, num_heads, dropout)
        self.norm_t = nn.LayerNorm(dim)
        self.temporal = Attention(dim, num_heads, dropout)
        self.norm_m = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: Tensor, spatial_frames: int | None = None) -> Tensor:
        b, t = x.shape[:2]
        ts = t if spatial_frames is None else spatial_frames
        if not 0 <= ts <= t:
            raise ValueError(f"spatial_frames {spatial_frames} not in [0, T={t}]")
        if ts:
            xs = rearrange(x[:, :ts], "b t s d -> (b t) s d")
            xs = xs + self.spatial(self.norm_s(xs))
            xs = rearrange(xs, "(b t) s d -> b t s d", b=b)
            x = xs if ts == t else torch.cat([xs, x[:, ts:]], dim=1)
        xt = rearrange(x, "b t s d -> (b s) t d")
        xt = xt + self.temporal(self.norm_t(xt), causal=True)
        xt = xt + self.mlp(self.norm_m(xt))
        return rearrange(xt, "(b s) t d -> b t s d", b=b)


def sincos_pos_embed(num_tokens: int, dim: int) -> Tensor:
    """Sine-cosine position table [N, D] (MAE/DiT style): 2D over a square h x h token grid (row-major,
    as ``rearrange(..., "h w -> (h w)")`` flattens) when N is a square and D % 4 == 0, else 1D over the
    token index; columns left over when D does not split evenly are zero.

    Used as the *initial value* of learned position embeddings: a small random init leaves tokens of a
    flat background almost indistinguishable after LayerNorm, and a toy FLAM then spent hundreds of extra
    steps learning where things are before it could bind and move them.
    """
    side = math.isqrt(num_tokens)
    if side * side == num_tokens and dim % 4 == 0:
        rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        coords = [rows.flatten(), cols.flatten()]
    else:
        coords = [torch.arange(num_tokens)]
    per = dim // (2 * len(coords))  # frequencies per coordinate (each gives a sin and a cos column)
    omega = 1.0 / 10000 ** (torch.arange(per, dtype=torch.float32) / max(per, 1))
    parts = []
    for c in coords:
        angle = c[:, None].float() * omega[None]
        parts += [angle.sin(), angle.cos()]
    table = torch.cat(parts, dim=1)
    return F.pad(table, (0, dim - table.shape[1]))
