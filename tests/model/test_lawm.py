"""LAWM-style latent action world model (paper 004) and IQL, part by part on synthetic data: the alignment
loss, the world model's use of labels, IQL's losses against hand-computed values and its choice of a known
best action."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.action_encoder import ActionEncoder, ActionEncoderConfig, alignment_loss
from model.config import LAMConfig
from model.iql import IQLAgent, IQLConfig, advantage_weights, expectile_loss, td_target
from model.lawm import LatentActionWorldModel
from model.zoo import build_model
from train.iql import fit_iql

LAM = LAMConfig(dim=32, num_heads=4, depth=1, num_slots=4, num_tokens=4, feature_dim=5, max_frames=4)


def test_alignment_pulls_encoded_actions_onto_idm_latents_of_a_synthetic_map(seeded_one_thread):
    """IDM latents are a fixed function of (action, slot states): the acting entity (the slot whose state
    carries a marker, in a random slot) moves by the action, the others drift with their own state. The
    encoder trained on the alignment loss alone reproduces them; its inverse recovers the action."""
    g = torch.Generator().manual_seed(0)
    m, k, d, a = 5, 3, 8, 4
    table, mix = torch.randn(m, a, generator=g), torch.randn(d, a, generator=g) * 0.3

    def idm(actions, states):
        z = states @ mix
        acting = states[..., 0].argmax(-1)
        z[torch.arange(len(z)), acting] += table[actions]
        return z

    def sample(n):
        s = torch.randn(n, k, d, generator=g)
        s[torch.arange(n), torch.randint(0, k, (n,), generator=g), 0] = 4.0  # the acting entity's marker
        return s, torch.randint(0, m, (n,), generator=g)

    enc = ActionEncoder(m, d, a, ActionEncoderConfig(dim=32, num_heads=4))
    opt = torch.optim.Adam(enc.parameters(), lr=3e-3)
    first = None
    for _ in range(500):
        s, act = sample(64)
        loss = alignment_loss(enc(act, s), idm(act, s), torch.ones(64, dtype=torch.bool))
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    s, act = sample(256)
    final = alignment_loss(enc(act, s), idm(act, s), torch.ones(256, dtype=torch.bool)).item()
    assert final < 0.05 * first
    assert (enc.invert(s, idm(act, s)) == act).float().mean() > 0.95


def test_alignment_loss_ignores_unlabelled_steps_and_stops_the_idm_gradient():
    enc, idm = torch.zeros(3, 2, 4, requires_grad=True), torch.ones(3, 2, 4, requires_grad=True)
    labelled = torch.tensor([True, False, True])
    loss = alignment_loss(enc, idm, labelled)
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert idm.grad is None
    assert enc.grad[1].abs().sum() == 0 and enc.grad[0].abs().sum() > 0
    assert alignment_loss(enc, idm, torch.zeros(3, dtype=torch.bool)).item() == 0.0


@pytest.mark.parametrize("name", ["flam", "adaworld"])
def test_world_model_reads_actions_only_on_labelled_steps(name, seeded_one_thread):
    torch.manual_seed(0)
    model = LatentActionWorldModel(build_model(name, LAM), 15, ActionEncoderConfig(dim=16, num_heads=2))
    b, t = 3, 4
    k = LAM.num_slots if name == "flam" else 1
    batch = {
        "features": torch.rand(b, t, 4, 5) * 2 - 1,
        "actions": torch.randint(0, 15, (b, t)),
        "labelled": torch.tensor([[True] * t, [False] * t, [True] * t]),
        "noise": torch.randn(b, t - 1, k, model.latent_dim),
        "encoder_draw": torch.zeros(b, t - 1),  # every labelled step uses the encoder's latent
    }
    loss, metrics = model(batch)
    assert metrics["encoder_share"].item() == pytest.approx(2 / 3)
    unlabelled = {**batch, "actions": batch["actions"].clone()}
    unlabelled["actions"][1] = (unlabelled["actions"][1] + 7) % 15
    assert torch.equal(model(unlabelled)[0], loss)
    labelled = {**batch, "actions": batch["actions"].clone()}
    labelled["actions"][0] = (labelled["actions"][0] + 7) % 15
    assert not torch.equal(model(labelled)[0], loss)
    loss.backward()
    assert model.encoder.out.weight.grad.abs().sum() > 0


def test_lawm_refuses_a_model_without_a_continuous_latent():
    with pytest.raises(ValueError, match="Gaussian IDM"):
        LatentActionWorldModel(build_model("genie", LAM), 15)


def test_iql_losses_against_hand_computed_values():
    diff = torch.tensor([1.0, -2.0])
    assert expectile_loss(diff, 0.7).item() == pytest.approx((0.7 * 1 + 0.3 * 4) / 2)
    assert expectile_loss(diff, 0.5).item() == pytest.approx(0.5 * 2.5)
    w = advantage_weights(torch.tensor([0.0, 1.0, 10.0]), 3.0, 100.0)
    assert w.tolist() == pytest.approx([1.0, float(np.exp(3.0)), 100.0])
    target = td_target(torch.tensor([1.0, 2.0]), torch.tensor([False, True]), torch.tensor([5.0, 5.0]), 0.9)
    assert target.tolist() == pytest.approx([1.0 + 0.9 * 5.0, 2.0])


def bandit(space: str, n: int = 512, seed: int = 0) -> dict[str, np.ndarray]:
    """One-step episodes from two states (many visits each); four behaviour actions, uniformly; action 2
    pays 1, the rest 0. Latent actions are four points in R^2 (one entity), the paying one at (1, -1)."""
    rng = np.random.default_rng(seed)
    acts = rng.integers(0, 4, n)
    points = np.array([[-1, -1], [-1, 1], [1, -1], [1, 1]], np.float32)
    states = np.eye(6, dtype=np.float32)[rng.integers(0, 2, n)][:, None]
    return {
        "states": states,
        "next_states": np.zeros_like(states),
        "actions": acts if space == "discrete" else points[acts][:, None],
        "rewards": (acts == 2).astype(np.float32),
        "dones": np.ones(n, bool),
    }


def test_iql_picks_the_known_best_action_where_behaviour_cloning_averages(seeded_one_thread):
    cfg = IQLConfig(steps=300, batch_size=128, lr=3e-3, dim=16, num_heads=2, temperature=10.0)
    data = bandit("discrete")
    agent = IQLAgent("discrete", 6, 4, cfg)
    fit_iql(agent, data, seed=0, device=torch.device("cpu"))
    assert (agent.act(torch.from_numpy(data["states"][:64])) == 2).all()

    data = bandit("latent")
    iql, bc = IQLAgent("latent", 6, 2, cfg), IQLAgent("latent", 6, 2, cfg)
    fit_iql(iql, data, seed=0, device=torch.device("cpu"))
    fit_iql(bc, data, seed=0, device=torch.device("cpu"), bc=True)
    s = torch.from_numpy(data["states"][:64])
    best = torch.tensor([1.0, -1.0])
    assert (iql.act(s)[:, 0] - best).norm(dim=-1).mean() < 0.5
    assert bc.act(s)[:, 0].norm(dim=-1).mean() < 0.5  # BC: the mean of the four points, the origin
