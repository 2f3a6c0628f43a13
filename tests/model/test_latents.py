"""The latent-action families of model/latents.py (``lam.latent`` = kl | sparse | vq): the sparse loss on a
hand-computed case and its gradient, the pooled batch statistics over slot latents, the sparse prior
sampler, every family through a training step of every latent-action model, and controller-driven
rollouts (``rollout`` with a function of the state)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from model.config import LAMConfig
from model.fsq import FSQ
from model.latents import FAMILIES, SparsePrior, sparse_energy, sparse_loss, vcm
from model.zoo import build_model

B, T, N, F, K = 2, 4, 9, 5, 3
TINY = LAMConfig(
    dim=24,
    num_heads=2,
    depth=1,
    num_slots=K,
    slot_iters=1,
    num_tokens=N,
    feature_dim=F,
    max_frames=4,
    vq_codes=8,
    slot_pretrain_steps=0,
)
LATENT_MODELS = ("flam", "flam_no_temporal", "flam_global", "genie", "adaworld", "playslot")

pytestmark = pytest.mark.usefixtures("seeded_one_thread")


def features(b: int = B, t: int = T) -> torch.Tensor:
    return FSQ([4] * F).indices_to_codes(torch.randint(0, 4**F, (b, t, N)))


def test_sparse_loss_matches_a_hand_computed_case():
    z = torch.tensor([[1.0, 0.0], [0.0, 3.0]])  # M = 2 latents, A = 2
    cfg = dataclasses.replace(TINY, l1=0.1, l2=1.0, vcm_variance=0.1, vcm_covariance=0.001, vcm_mean=0.1)
    # E: hinge max(sqrt(2) - ||z||^2, 0) + 0.1 * ||z||_1: (sqrt 2 - 1 + 0.1, 0 + 0.3)
    energy = ((math.sqrt(2) - 1 + 0.1) + 0.3) / 2
    # VCM: means (0.5, 1.5); unbiased variances (0.5, 4.5); covariance -1.5 off the diagonal
    std = [math.sqrt(0.5 + 1e-4), math.sqrt(4.5 + 1e-4)]
    variance = 0.1 * (max(1 - std[0], 0) + max(1 - std[1], 0)) / 2
    covariance = 0.001 * (2 * 1.5**2) / 2
    mean = 0.1 * (0.5 + 1.5) / 2
    loss, terms = sparse_loss(z, cfg)
    assert terms["energy"].item() == pytest.approx(energy, rel=1e-6)
    assert terms["vcm_variance"].item() == pytest.approx(variance, rel=1e-5)
    assert terms["vcm_covariance"].item() == pytest.approx(covariance, rel=1e-6)
    assert terms["vcm_mean"].item() == pytest.approx(mean, rel=1e-6)
    assert loss.item() == pytest.approx(energy + variance + covariance + mean, rel=1e-6)
    # the mean term is on |mean|: a negative mean costs the same as a positive one
    assert vcm(-z, 0, 0, 1.0)["vcm"].item() == pytest.approx(1.0)


@pytest.mark.parametrize("scale", [0.3, 1.5])
def test_energy_gradient_moves_squared_norms_to_sqrt_a(scale):
    """Gradient descent on E pushes ||z||^2 up to sqrt(A) from below (the hinge) and down to it from above
    (the L1 term). (Coordinates under l1 / (2 l2) shrink to zero on the way: the sparsity.)"""
    a = 16
    z = (scale * torch.randn(16, a, generator=torch.Generator().manual_seed(0))).requires_grad_()
    start = z.detach().square().sum(-1)
    assert ((start < math.sqrt(a)) if scale < 1 else (start > math.sqrt(a))).all()
    opt = torch.optim.SGD([z], lr=0.01)
    for _ in range(3000):
        opt.zero_grad()
        sparse_energy(z, l1=0.2, l2=1.0).sum().backward()
        opt.step()
    sq = z.detach().square().sum(-1)
    assert (sq - math.sqrt(a)).abs().max() < 0.2, sq  # within 5%: steps overshoot the kink a little


def test_pooled_statistics_leave_a_quiet_slot_alone():
    """Slot 0 acts (latents spread with std > 1 per dim), slot 1 sits at one latent (up to 1% jitter).
    ``sparse_loss`` pools the slots of its input [M, K, A] (model/latents.py): VCM's variance term is
    satisfied by slot 0 and pulls nothing on slot 1; statistics per slot would push slot 1 to vary, i.e.
    to act."""
    gen = torch.Generator().manual_seed(0)
    acting = 3.0 * torch.randn(256, 1, 4, generator=gen)
    quiet = (0.5 + 0.01 * torch.randn(256, 1, 4, generator=gen)).requires_grad_()
    z = torch.cat([acting, quiet], 1)  # [M, K, A]
    only_variance = dataclasses.replace(TINY, l1=0, l2=0, vcm_variance=0.1, vcm_covariance=0, vcm_mean=0)
    loss, _ = sparse_loss(z, only_variance)
    (grad,) = torch.autograd.grad(loss, quiet)
    assert grad.abs().max() == 0
    per_slot = sum(vcm(z[:, k], 0.1, 0.0, 0.0)["vcm_variance"] for k in range(2))
    (grad,) = torch.autograd.grad(per_slot, quiet)
    assert grad.abs().max() > 0


def test_sparse_prior_fits_location_and_scale_and_samples_them():
    prior = SparsePrior(3, momentum=1.0)  # momentum 1: the last batch's statistics
    data = torch.distributions.Laplace(torch.tensor([1.0, -2.0, 0.0]), torch.tensor([0.5, 2.0, 0.1]))
    torch.manual_seed(0)
    prior.update(data.sample((20000,)))
    torch.testing.assert_close(prior.loc, torch.tensor([1.0, -2.0, 0.0]), atol=0.05, rtol=0)
    torch.testing.assert_close(prior.scale, torch.tensor([0.5, 2.0, 0.1]), atol=0.05, rtol=0.05)
    draws = prior.sample((20000, 3), torch.Generator().manual_seed(1))
    torch.testing.assert_close(draws.median(0).values, prior.loc, atol=0.06, rtol=0)
    torch.testing.assert_close((draws - prior.loc).abs().mean(0), prior.scale, atol=0.05, rtol=0.05)
    again = prior.sample((20000, 3), torch.Generator().manual_seed(1))
    torch.testing.assert_close(draws, again)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", LATENT_MODELS)
def test_every_family_trains_one_step_of_every_latent_action_model(name, family):
    model = build_model(name, dataclasses.replace(TINY, latent=family))
    assert model.latent == family
    torch.nn.init.normal_(model.head.weight, std=0.5)  # zero head: predictions would ignore the latents
    x = features()
    batch = {"features": x}
    shape = model.noise_shape(x)
    assert (shape is not None) == (family == "kl")
    if shape is not None:
        batch["noise"] = torch.randn(shape)
    loss, metrics = model(batch)
    assert torch.isfinite(loss)
    own = {"kl": "kl", "sparse": "sparse_loss", "vq": "vq_loss"}[family]
    assert own in metrics
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss.backward()
    idm = [p for n, p in model.named_parameters() if n.startswith("idm.")]
    assert idm and all(p.grad is not None and p.grad.abs().sum() > 0 for p in idm[-2:])
    opt.step()

    model.eval()
    with torch.no_grad():
        z = model.infer_actions(x)
        k = K if model.factored else 1
        assert z.shape == (B, T - 1, k, model.action_dim)
        if family == "vq":  # codes from the one codebook, shared by the slots
            book = model.latent_head.codebook
            assert ((z.reshape(-1, 1, z.shape[-1]) - book).abs().sum(-1).min(-1).values == 0).all()
        gen = torch.Generator().manual_seed(0)
        prior = model.sample_prior_actions(B, 2, generator=gen)
        assert prior.shape == (B, 2, k, model.action_dim)
        assert model.rollout(x[:, :1], prior).shape == (B, 2, N, F)
        torch.testing.assert_close(prior, model.sample_prior_actions(B, 2, generator=gen.manual_seed(0)))


def test_latent_family_is_checked_and_only_kl_draws_noise():
    with pytest.raises(ValueError, match=r"LAMConfig\.latent"):
        LAMConfig(latent="gumbel")
    with pytest.raises(ValueError, match="l1"):
        LAMConfig(l1=-1.0)
    assert build_model("genie", TINY).latent == "vq" and build_model("adaworld", TINY).latent == "kl"
    assert build_model("genie", dataclasses.replace(TINY, latent="kl")).noise_shape(features()) is not None
    sparse = build_model("flam", dataclasses.replace(TINY, latent="sparse")).eval()
    x = features()
    torch.testing.assert_close(sparse.predict(x)["z"], sparse.predict(x)["z"])
    assert "logvar" not in sparse.predict(x)


@pytest.mark.parametrize("name", ["flam", "adaworld"])
def test_rollout_driven_by_a_function_of_the_state(name):
    """A controller inside the rollout: called once per step with the model's state before that step
    (slots for FLAM, embedded tokens for a scene model), it gives the same rollout as the same actions
    passed as a tensor."""
    model = build_model(name, TINY).eval()
    torch.nn.init.normal_(model.head.weight, std=0.5)
    x = features(t=3)
    with torch.no_grad():
        actions = model.infer_actions(x)  # [B, 2, K', A]
        seen = []

        def controller(i, state):
            seen.append(state)
            return actions[:, i]

        driven = model.rollout(x[:, :1], controller, steps=2)
        torch.testing.assert_close(driven, model.rollout(x[:, :1], actions))
        torch.testing.assert_close(seen[0], model.states(x[:, :1])[:, -1])
        with pytest.raises(ValueError, match="steps"):
            model.rollout(x[:, :1], controller)
        with pytest.raises(ValueError, match="actions must be"):
            model.rollout(x[:, :1], lambda i, s: actions[:, i, :1, :2], steps=1)
