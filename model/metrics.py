"""Image-quality metrics as pure tensor functions, shared by training-time validation and evaluation.

Conventions (see ../shared/METRICS.md): images are float [..., 3, H, W] in [0, 1] (use ``to_unit`` for
[-1, 1] tensors); PSNR is computed per image, then averaged; SSIM uses Wang et al.'s settings
(Gaussian window sigma 1.5, 11 taps, population covariance, data range 1, K1 0.01, K2 0.03) with
"valid" borders, matching scikit-image's
``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((images.float() + 1) / 2).clamp(0, 1)


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB: [..., C, H, W] x2 -> [...]. Identical images give +inf."""
    mse = (pred.float() - target.float()).pow(2).flatten(-3).mean(-1)
    return 10 * torch.log10(data_range**2 / mse)


def _gaussian_window(sigma: float = 1.5, size: int = 11, device=None) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM: [..., C, H, W] x2 -> [...] (mean over channels and valid window positions)."""
    lead = pred.shape[:-3]
    c, h, w = pred.shape[-3:]
    x = pred.reshape(-1, c, h, w).double()
    y = target.reshape(-1, c, h, w).double()
    g = _gaussian_window(device=x.device)
    kh = g.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    kw = g.view(1, 1, 1, -1).expand(c, 1, 1, -1)

    def blur(z: torch.Tensor) -> torch.Tensor:  # separable Gaussian, valid borders
        return F.conv2d(F.conv2d(z, kh, groups=c), kw, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.mean(dim=(-3, -2, -1)).float().reshape(lead)
