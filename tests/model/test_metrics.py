"""PSNR/SSIM agree with scikit-image (an independent implementation) and give ideal scores on equal inputs."""

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from model.metrics import psnr, ssim, to_unit


def pair(seed: int = 0, shape=(2, 3, 3, 40, 48)):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(shape, generator=g)
    return a, (a + 0.1 * torch.randn(shape, generator=g)).clamp(0, 1)


def test_psnr_matches_scikit_image_per_image():
    a, b = pair()
    ours = psnr(b, a)
    assert ours.shape == (2, 3)
    for i in range(2):
        for t in range(3):
            ref = peak_signal_noise_ratio(a[i, t].numpy(), b[i, t].numpy(), data_range=1.0)
            assert abs(float(ours[i, t]) - ref) < 1e-4


def test_ssim_matches_scikit_image_wang_settings():
    a, b = pair(1)
    ours = ssim(b, a)
    for i in range(2):
        for t in range(3):
            ref = structural_similarity(
                a[i, t].permute(1, 2, 0).numpy().astype(np.float64),
                b[i, t].permute(1, 2, 0).numpy().astype(np.float64),
                channel_axis=2,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
            )
            assert abs(float(ours[i, t]) - ref) < 1e-5


def test_identical_images_score_ideally():
    a, _ = pair(2)
    assert torch.isinf(psnr(a, a)).all()
    torch.testing.assert_close(ssim(a, a), torch.ones(2, 3))
    assert torch.equal(to_unit(torch.tensor([-1.0, 0.0, 1.0, 3.0])), torch.tensor([0.0, 0.5, 1.0, 1.0]))
