"""Frame tokenizer (paper section 4.1): a conv autoencoder with an FSQ bottleneck, trained per dataset on
pixel reconstruction and then frozen. Its integer codes are cached once (train/precompute.py); the
world model consumes the exact FSQ vectors of those codes (``codes_to_features``), and evaluation
decodes predicted features back to pixels with the frozen decoder.

Architectures (Table 5), picked by ``TokenizerConfig.arch`` from the ``ARCHS`` dict:
- ``"impala"`` (simulators): per stage conv3x3 -> maxpool 3x3/2 -> ``num_res_blocks`` IMPALA residual
  blocks (ReLU, no norm); the decoder mirrors it with residual blocks and nearest x2 + conv upsampling.
- ``"magvit"`` (real frames): the 2D MAGVIT-v2 / Open-MAGVIT2 image tokenizer without attention:
  pre-activation GroupNorm + SiLU residual blocks, stride-2 conv downsampling, residual mid blocks; the
  decoder puts an adaptive GroupNorm conditioned on the quantised latent before each stage's residual
  blocks and upsamples with conv + depth-to-space.
Every stage halves H and W, so tokens per frame are h x w with h = image_size / 2**len(channels).

Shapes: B batch, T time, H W frame size, h w token grid, D = len(levels) FSQ width, E = encoder width
(``embed_dim``, or D when 0). Pixel frames come as uint8 [B, T, H, W, 3] (as decoded from shards) or
float [B, T, 3, H, W] in [-1, 1]; the conv nets run on [N, C, H, W] with N = B*T folded.

Sizes (``num_res_blocks=2``): impala at 128 with channels (64, 128, 128), levels [4]*5 -> 16x16 tokens,
3.15M params; magvit at 224 with channels (64, 128, 128, 256), levels [4]*7 -> 14x14 tokens, 16.7M params.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F

from model.blocks import (
    AdaptiveGroupNorm,
    DepthToSpaceUpsample,
    ImpalaResBlock,
    NearestUpsample,
    ResBlock,
    impala_stages,
)
from model.fsq import FSQ

RECON_LOSSES = ("mse", "l1", "l1+mse")
UPSAMPLERS = {"nearest": NearestUpsample, "depth_to_space": DepthToSpaceUpsample}


@dataclass(frozen=True)
class TokenizerConfig:
    """Frame tokenizer hyperparameters. Saved in the tokenizer checkpoint; rebuild from there."""

    arch: str = "impala"  # "impala" (simulators) | "magvit" (real frames) | "patch"; see ARCHS
    image_size: int = 128  # square frames H = W = image_size
    levels: tuple[int, ...] = (4, 4, 4, 4, 4)  # FSQ levels; codebook = prod(levels)
    channels: tuple[int, ...] = (64, 128, 128)  # width per stage; each stage downsamples x2
    num_res_blocks: int = 2  # residual blocks per stage (and in magvit's mid block)
    embed_dim: int = 0  # 0 -> len(levels); else encoder width E with 1x1 projections E <-> D around FSQ
    num_groups: int = 32  # GroupNorm groups (magvit only); must divide every entry of channels
    # Pixel loss on [-1, 1] frames, no perceptual/GAN term (no pretrained weights offline):
    # "mse" = paper Eq. 1; "l1" = sharper edges, less blur on flat sprites; "l1+mse" = their sum.
    recon_loss: str = "mse"
    # IMPALA decoder's x2 upsampling: "nearest" (nearest + conv) | "depth_to_space" (conv + pixel shuffle,
    # MAGVIT-v2's upsampler): per-pixel filters inside each 2x2 block, which draws flat sprites exactly.
    upsample: str = "nearest"
    # "patch" only: side of the square pixel patch each token encodes on its own (the token grid's stride).
    patch_size: int = 0

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"tokenizer arch {self.arch!r} unknown; choose one of {sorted(ARCHS)}")
        if not self.levels or any(int(v) < 2 for v in self.levels):
            raise ValueError(f"tokenizer levels must be non-empty integers >= 2, got {self.levels}")
        if math.prod(self.levels) > 2**16:
            raise ValueError(
                f"levels {self.levels} give codebook_size {math.prod(self.levels)} > 65536: "
                "the token cache stores codes as uint16"
            )
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"tokenizer channels must be non-empty positive integers, got {self.channels}")
        if self.arch == "patch" and self.patch_size < 1:
            raise ValueError(
                f"arch 'patch' needs patch_size >= 1 (pixels per token side), got {self.patch_size}"
            )
        if self.arch != "patch" and self.patch_size:
            raise ValueError(f"patch_size is for arch 'patch' only, got arch {self.arch!r}")
        if self.image_size < 1 or self.image_size % self.downsample:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by the total downsampling "
                f"2**len(channels) = {self.downsample} (channels {self.channels})"
            )
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if self.embed_dim < 0:
            raise ValueError(f"embed_dim must be >= 0 (0 = len(levels)), got {self.embed_dim}")
        if self.arch == "magvit" and any(c % self.num_groups for c in self.channels):
            raise ValueError(
                f"magvit: num_groups {self.num_groups} must divide every stage width "
                f"in channels {self.channels}"
            )
        if self.upsample not in UPSAMPLERS:
            raise ValueError(
                f"tokenizer upsample {self.upsample!r} unknown; choose one of {sorted(UPSAMPLERS)}"
            )
        if self.recon_loss not in RECON_LOSSES:
            raise ValueError(f"recon_loss {self.recon_loss!r} unknown; choose one of {RECON_LOSSES}")

    @property
    def downsample(self) -> int:
        """Frame-to-token stride: 2**len(channels) (``patch``: patch_size)."""
        return self.patch_size if self.arch == "patch" else 2 ** len(self.channels)

    @property
    def grid_size(self) -> int:
        """Tokens per side, h = w = image_size / downsample."""
        return self.image_size // self.downsample

    @property
    def dim(self) -> int:
        """FSQ width D = len(levels): the feature width the world model consumes."""
        return len(self.levels)

    @property
    def latent_dim(self) -> int:
        """Encoder output / decoder input width E."""
        return self.embed_dim or self.dim


# ----------------------------------------------------------------------------------------------------
# Pixel conversions


def to_float(frames: Tensor) -> Tensor:
    """uint8 [..., H, W, 3] in [0, 255] -> float32 [..., 3, H, W] in [-1, 1]."""
    if frames.dtype != torch.uint8 or frames.ndim < 3 or frames.shape[-1] != 3:
        raise ValueError(f"to_float expects uint8 [..., H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    return rearrange(frames, "... h w c -> ... c h w").float() / 127.5 - 1.0


def to_uint8(frames: Tensor) -> Tensor:
    """float [..., 3, H, W] in [-1, 1] (clamped) -> uint8 [..., H, W, 3]; inverse of ``to_float``."""
    if not frames.is_floating_point() or frames.ndim < 3 or frames.shape[-3] != 3:
        raise ValueError(f"to_uint8 expects float [..., 3, H, W], got {frames.dtype} {tuple(frames.shape)}")
    pixels = ((frames.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return rearrange(pixels, "... c h w -> ... h w c")


# ----------------------------------------------------------------------------------------------------
# Encoders [N, 3, H, W] -> [N, E, h, w] and decoders [N, E, h, w] -> [N, 3, H, W] (unbounded)


class ImpalaEncoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        layers = impala_stages(3, tuple(cfg.channels), cfg.num_res_blocks)
        layers += [nn.ReLU(), nn.Conv2d(cfg.channels[-1], cfg.latent_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ImpalaDecoder(nn.Module):
    """Mirror of ImpalaEncoder: per stage (deepest first) residual blocks, then x2 upsample to the
    previous stage's width."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        widths = cfg.channels[::-1]
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_dim, widths[0], 3, padding=1)]
        for c, c_out in zip(widths, (*widths[1:], widths[-1]), strict=True):
            layers += [ImpalaResBlock(c) for _ in range(cfg.num_res_blocks)]
            layers += [nn.ReLU(), UPSAMPLERS[cfg.upsample](c, c_out)]
        layers += [nn.ReLU(), nn.Conv2d(widths[-1], 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class MagvitEncoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        g, n = cfg.num_groups, cfg.num_res_blocks
        self.conv_in = nn.Conv2d(3, cfg.channels[0], 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        c_in = cfg.channels[0]
        for c in cfg.channels:
            blocks = [ResBlock(c_in if i == 0 else c, c, g) for i in range(n)]
            c_in = c
            # Strided conv, not pooling: MAGVIT-v2 learns its downsampling kernels.
            stages.append(nn.Sequential(*blocks, nn.Conv2d(c_in, c_in, 3, stride=2, padding=1)))
        self.stages = nn.Sequential(*stages)
        self.mid = nn.Sequential(*[ResBlock(c_in, c_in, g) for _ in range(n)])
        self.norm_out = nn.GroupNorm(g, c_in, eps=1e-6)
        self.conv_out = nn.Conv2d(c_in, cfg.latent_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.mid(self.stages(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(x)))


class MagvitDecoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        g, n = cfg.num_groups, cfg.num_res_blocks
        c_in = cfg.channels[-1]
        self.conv_in = nn.Conv2d(cfg.latent_dim, c_in, 3, padding=1)
        self.mid = nn.Sequential(*[ResBlock(c_in, c_in, g) for _ in range(n)])
        self.adaptive_norms = nn.ModuleList()
        self.stages = nn.ModuleList()
        for c in cfg.channels[::-1]:
            self.adaptive_norms.append(AdaptiveGroupNorm(cfg.latent_dim, c_in, g))
            blocks = [ResBlock(c_in if i == 0 else c, c, g) for i in range(n)]
            c_in = c
            self.stages.append(nn.Sequential(*blocks, DepthToSpaceUpsample(c_in)))
        self.norm_out = nn.GroupNorm(g, c_in, eps=1e-6)
        self.conv_out = nn.Conv2d(c_in, 3, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.mid(self.conv_in(z))
        for norm, stage in zip(self.adaptive_norms, self.stages, strict=True):
            x = stage(norm(x, z))
        return self.conv_out(F.silu(self.norm_out(x)))


class PatchEncoder(nn.Module):
    """Each token encodes its own p x p patch and nothing else: a stride-p conv (a linear map of the patch)
    then per-token 1x1 convs through ``channels``. For grid worlds rendered with p-pixel cells the tokens
    are the cells, and a cell's code does not change when a neighbour does."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        p, widths = cfg.patch_size, cfg.channels
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], p, stride=p)]
        for c_in, c_out in zip(widths, (*widths[1:], cfg.latent_dim), strict=True):
            layers += [nn.GELU(), nn.Conv2d(c_in, c_out, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class PatchDecoder(nn.Module):
    """Mirror of PatchEncoder: per-token 1x1 convs, then each token draws its own p x p patch (conv to
    3 p^2 channels, depth-to-space)."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        widths = cfg.channels[::-1]
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_dim, widths[0], 1)]
        for c_in, c_out in zip(widths, (*widths[1:], 3 * cfg.patch_size**2), strict=True):
            layers += [nn.GELU(), nn.Conv2d(c_in, c_out, 1)]
        self.net = nn.Sequential(*layers)
        self.patch = cfg.patch_size

    def forward(self, z: Tensor) -> Tensor:
        return rearrange(self.net(z), "n (c r s) h w -> n c (h r) (w s)", r=self.patch, s=self.patch)


# Visible name -> (encoder, decoder) classes; TokenizerConfig.arch picks one.
ARCHS: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "impala": (ImpalaEncoder, ImpalaDecoder),
    "magvit": (MagvitEncoder, MagvitDecoder),
    "patch": (PatchEncoder, PatchDecoder),
}


# ----------------------------------------------------------------------------------------------------
# Loss


def reconstruction_loss(recon: Tensor, target: Tensor, kind: str = "mse") -> tuple[Tensor, dict[str, Tensor]]:
    """recon, target: float [..., 3, H, W] in [-1, 1] -> (scalar fp32 loss, detached metrics).

    ``kind`` in RECON_LOSSES: "mse", "l1" or "l1+mse" (sum). Metrics: ``mse``, ``l1`` (of the raw
    recon) and ``psnr`` (dB, from the batch MSE of the recon clamped to [-1, 1], peak-to-peak 2).
    """
    if recon.shape != target.shape:
        raise ValueError(f"recon shape {tuple(recon.shape)} != target shape {tuple(target.shape)}")
    recon, target = recon.float(), target.float()  # loss in fp32 even when the decoder ran in bf16
    mse = F.mse_loss(recon, target)
    l1 = F.l1_loss(recon, target)
    if kind == "mse":
        loss = mse
    elif kind == "l1":
        loss = l1
    elif kind == "l1+mse":
        loss = l1 + mse
    else:
        raise ValueError(f"recon_loss {kind!r} unknown; choose one of {RECON_LOSSES}")
    with torch.no_grad():
        clamped_mse = F.mse_loss(recon.clamp(-1.0, 1.0), target)
        psnr = 10.0 * torch.log10(4.0 / clamped_mse.clamp_min(1e-10))
    return loss, {"loss": loss.detach(), "mse": mse.detach(), "l1": l1.detach(), "psnr": psnr}


# ----------------------------------------------------------------------------------------------------
# The tokenizer


class Tokenizer(nn.Module):
    """Frames <-> FSQ codes. See the module docstring for shapes and architectures.

    ``encode``/``decode``/``codes_to_features`` are the frozen-use API; ``forward`` + ``reconstruction_loss``
    are for training. ``decode*`` clamp to [-1, 1]; ``forward``'s recon is left unclamped so the loss keeps
    its gradient outside the range.
    """

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        encoder_cls, decoder_cls = ARCHS[cfg.arch]
        self.encoder = encoder_cls(cfg)
        self.decoder = decoder_cls(cfg)
        # Only with embed_dim: a wider encoder/decoder interface, projected to the narrow FSQ width D.
        self.project_in = nn.Conv2d(cfg.latent_dim, cfg.dim, 1) if cfg.embed_dim else nn.Identity()
        self.project_out = nn.Conv2d(cfg.dim, cfg.latent_dim, 1) if cfg.embed_dim else nn.Identity()
        self.fsq = FSQ(cfg.levels)

    @property
    def codebook_size(self) -> int:
        return self.fsq.codebook_size

    # -- frozen-use API ------------------------------------------------------------------------------

    def encode(self, frames: Tensor) -> Tensor:
        """frames: uint8 [B, T, H, W, 3] or float [B, T, 3, H, W] in [-1, 1] -> codes int64 [B, T, h, w]."""
        _, codes = self._quantize(frames)
        return codes

    def decode(self, codes: Tensor) -> Tensor:
        """codes: integer [B, T, h, w] -> frames float [B, T, 3, H, W] clamped to [-1, 1]."""
        return self.decode_features(self.codes_to_features(codes))

    def codes_to_features(self, codes: Tensor, check: bool = True) -> Tensor:
        """codes: integer [B, T, h, w] (any int dtype, e.g. the cache's uint16) -> the exact FSQ vectors,
        fp32 [B, T, h, w, D] in [-1, 1]. The one conversion of codes into what the world models read
        (they take it flattened over h, w: [B, T, N, D]).

        ``check=False`` skips the range check of the codes, which reads their min and max back to the
        host: for codes known to be this tokenizer's (a verified token cache) on a GPU, every step."""
        g = self.cfg.grid_size
        if codes.is_floating_point() or codes.ndim != 4 or tuple(codes.shape[-2:]) != (g, g):
            raise ValueError(
                f"codes must be integer [B, T, {g}, {g}], got {codes.dtype} {tuple(codes.shape)}"
            )
        codes = codes.long()  # the token cache stores uint16, which lacks min/max and floor division
        if check and codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"codes outside [0, {self.codebook_size}): min {int(codes.min())}, "
                f"max {int(codes.max())}; wrong tokenizer for this token cache?"
            )
        return self.fsq.indices_to_codes(codes)

    def decode_features(self, features: Tensor) -> Tensor:
        """features: float [B, T, h, w, D] (FSQ vectors, or a world model's predictions of them) ->
        frames float [B, T, 3, H, W] clamped to [-1, 1]. Predictions are decoded as given; use
        ``self.fsq.snap`` first to decode their nearest codes instead."""
        g, d = self.cfg.grid_size, self.cfg.dim
        if features.ndim != 5 or tuple(features.shape[-3:]) != (g, g, d):
            raise ValueError(f"features must be [B, T, {g}, {g}, {d}], got {tuple(features.shape)}")
        b = features.shape[0]
        z_q = rearrange(features, "b t h w d -> (b t) d h w")
        recon = self.decoder(self.project_out(z_q))
        return rearrange(recon, "(b t) c h w -> b t c h w", b=b).clamp(-1.0, 1.0)

    # -- training ------------------------------------------------------------------------------------

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """frames (as in ``encode``) -> (recon float [B, T, 3, H, W], unclamped; codes int64 [B, T, h, w])."""
        z_q, codes = self._quantize(frames)
        b = codes.shape[0]
        recon = self.decoder(self.project_out(z_q))
        return rearrange(recon, "(b t) c h w -> b t c h w", b=b), codes

    def reconstruction_loss(self, recon: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``reconstruction_loss`` with ``cfg.recon_loss``; target: float [B, T, 3, H, W] (``to_float``)."""
        return reconstruction_loss(recon, target, self.cfg.recon_loss)

    # -- internals -----------------------------------------------------------------------------------

    def _quantize(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """frames -> (z_q fp32 [B*T, D, h, w], codes int64 [B, T, h, w])."""
        x = self._check_frames(frames)
        b = x.shape[0]
        z = self.project_in(self.encoder(rearrange(x, "b t c h w -> (b t) c h w")))
        z_q, idx = self.fsq(rearrange(z, "n d h w -> n h w d"))  # FSQ quantises the last axis
        return rearrange(z_q, "n h w d -> n d h w"), rearrange(idx, "(b t) h w -> b t h w", b=b)

    def _check_frames(self, frames: Tensor) -> Tensor:
        """uint8 [B, T, H, W, 3] or float [B, T, 3, H, W] -> float [B, T, 3, H, W] in [-1, 1]."""
        s = self.cfg.image_size
        if frames.dtype == torch.uint8:
            if frames.ndim != 5 or tuple(frames.shape[2:]) != (s, s, 3):
                raise ValueError(f"uint8 frames must be [B, T, {s}, {s}, 3], got {tuple(frames.shape)}")
            return to_float(frames)
        if not frames.is_floating_point() or frames.ndim != 5 or tuple(frames.shape[2:]) != (3, s, s):
            raise ValueError(
                f"frames must be uint8 [B, T, {s}, {s}, 3] or float [B, T, 3, {s}, {s}], "
                f"got {frames.dtype} {tuple(frames.shape)}"
            )
        return frames
