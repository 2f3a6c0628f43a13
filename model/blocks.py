"""Shared building blocks. All conv blocks take and return [N, C, H, W] (N = folded batch, e.g. B*T).

Conv blocks (frame tokenizer, ``model/tokenizer.py``):
- ``ImpalaResBlock``: IMPALA-CNN residual block (Espeholt et al. 2018), ReLU, no normalisation.
- ``ResBlock``: MAGVIT-v2 / Open-MAGVIT2 residual block, GroupNorm + SiLU, bias-free convs.
- ``AdaptiveGroupNorm``: MAGVIT-v2 decoder norm whose scale/shift come from the quantised latent.
- ``DepthToSpaceUpsample``: conv to 4x channels then depth-to-space (MAGVIT-v2's decoder upsampler).
- ``NearestUpsample``: nearest x2 then conv (no transposed-conv checkerboard).
"""

from __future__ import annotations

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
    """conv3x3 to 4C channels, then rearrange each 2x2 channel group into space.
    [N, C, H, W] -> [N, C, 2H, 2W]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 4 * channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return rearrange(self.conv(x), "n (c r s) h w -> n c (h r) (w s)", r=2, s=2)


class NearestUpsample(nn.Module):
    """Nearest-neighbour x2 then conv3x3. [N, C_in, H, W] -> [N, C_out, 2H, 2W]."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
