"""Image-quality metrics as pure tensor functions, shared by training-time validation and evaluation.

Conventions (see ../shared/METRICS.md): images are float [..., 3, H, W] in [0, 1] (use ``to_unit`` for
[-1, 1] tensors); PSNR is computed per image, then averaged; SSIM uses Wang et al.'s settings
(Gaussian window sigma 1.5, 11 taps, population covariance, data range 1, K1 0.01, K2 0.03) with
"valid" borders, matching scikit-image's
``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``.
The Fréchet distance (FVD on I3D logits from ``model/i3d.py``) works in float64 numpy and returns a float.
"""

from __future__ import annotations

import numpy as np
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


def _float64_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def frechet_distance(feats_a: torch.Tensor | np.ndarray, feats_b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D] and [M, D] (N, M >= 2):
    ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), unbiased covariances, float64.

    The matrix square root is ``scipy.linalg.sqrtm``, handled as in the FID/FVD reference code: a
    non-finite result is retried with 1e-6 added to both diagonals; a complex result (numerical error
    on near-singular products, e.g. when N < D) keeps its real part if the diagonal's imaginary part is
    below 1e-3, otherwise raises ValueError."""
    from scipy import linalg  # lazy: scipy only for evaluation

    a, b = (_float64_numpy(f) for f in (feats_a, feats_b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"expected features [N, D] and [M, D] with N, M >= 2, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    sigma_a = np.atleast_2d(np.cov(a, rowvar=False))
    sigma_b = np.atleast_2d(np.cov(b, rowvar=False))
    covmean = linalg.sqrtm(sigma_a @ sigma_b)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma_a)) * 1e-6
        covmean = linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max()
        if imag > 1e-3:
            raise ValueError(f"matrix square root has a large imaginary component ({imag:.3g})")
        covmean = covmean.real
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(covmean))


def fvd(logits_real: torch.Tensor | np.ndarray, logits_fake: torch.Tensor | np.ndarray) -> float:
    """Fréchet Video Distance: the Fréchet distance between the I3D (Kinetics-400) logits [N, 400] of
    real and generated clips, as computed by ``model.i3d.I3D`` (videos in [-1, 1], >= 9 frames)."""
    return frechet_distance(logits_real, logits_fake)
