"""The action decoder: invariant to the order of FLAM's slot latents, and able to find the acting slot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.action_decoder import ActionDecoder, ActionDecoderConfig
from train.supervised import FitConfig, accuracy, fit_classifier, predict

CFG = ActionDecoderConfig(dim=32, num_heads=4)


def test_logits_do_not_depend_on_slot_order(seeded_one_thread):
    decoder = ActionDecoder(latent_dim=4, num_actions=15, cfg=CFG).eval()
    latents = torch.randn(8, 16, 4)
    perm = torch.randperm(16)
    with torch.no_grad():
        assert torch.allclose(decoder(latents), decoder(latents[:, perm]), atol=1e-5)
        # ...but they do depend on what the slots hold
        assert not torch.allclose(decoder(latents), decoder(latents.flip(-1)), atol=1e-3)


def test_a_monolithic_latent_goes_through_the_same_path():
    decoder = ActionDecoder(latent_dim=64, num_actions=15, cfg=CFG)
    assert decoder(torch.randn(3, 1, 64)).shape == (3, 15)
    with pytest.raises(ValueError, match=r"latents must be \[B, K, 64\]"):
        decoder(torch.randn(3, 64))
    with pytest.raises(ValueError, match="no latent actions"):
        ActionDecoder(latent_dim=0, num_actions=15)


def acting_slot_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """K = 6 slot latents of size 3: one slot (at a random position) carries the action as a point on a
    circle with a marker, the others move at random with no marker."""
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, 5, n)
    latents = rng.normal(size=(n, 6, 3)).astype(np.float32) * 0.5
    latents[:, :, 2] = -1.0
    slot = rng.integers(0, 6, n)
    angle = actions * 2 * np.pi / 5
    latents[np.arange(n), slot] = np.stack([np.cos(angle), np.sin(angle), np.ones(n)], -1)
    return latents, actions


def test_decoder_reads_the_acting_slot_wherever_it_is(seeded_one_thread):
    latents, actions = acting_slot_data(2048, seed=0)
    test_latents, test_actions = acting_slot_data(512, seed=1)
    decoder = ActionDecoder(latent_dim=3, num_actions=5, cfg=CFG)
    rows = np.arange(len(latents))
    fit = FitConfig(steps=300, batch_size=128, lr=3e-3)
    fit_classifier(
        decoder, lambda r: torch.from_numpy(latents[r]), rows, actions, fit, 0, torch.device("cpu")
    )
    probs = predict(decoder, lambda r: torch.from_numpy(test_latents[r]), np.arange(512), torch.device("cpu"))
    assert accuracy(probs, test_actions) > 0.95
