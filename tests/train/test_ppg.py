"""PPG / PPO update steps without an environment: GAE, the auxiliary phase, a policy-gradient sanity check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from model.policy import ActorCritic, PolicyNetConfig
from train.ppg import EpisodeStats, RewardNormalizer, UpdateSettings, aux_phase, gae, policy_phase

TINY = PolicyNetConfig(channels=(4, 4), hidden=16, num_res_blocks=1, obs_size=8)


def test_gae_matches_a_hand_computed_case():
    # gamma = lambda = 0.5; the episode ends after step 1, so step 1 does not bootstrap from step 2.
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[0.5], [1.0], [1.5]])
    dones = torch.tensor([[False], [True], [False]])
    adv = gae(rewards, values, dones, last_value=torch.tensor([2.0]), gamma=0.5, lam=0.5)
    # t=2: 3 + 0.5*2 - 1.5 = 2.5;  t=1: 2 - 1 = 1 (terminal);  t=0: (1 + 0.5*1 - 0.5) + 0.25*1 = 1.25
    assert torch.allclose(adv[:, 0], torch.tensor([1.25, 1.0, 2.5]))


def test_gae_with_lambda_one_is_the_discounted_return_minus_value():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.rand(6, 3, generator=g), torch.rand(6, 3, generator=g)
    dones = torch.zeros(6, 3, dtype=torch.bool)
    last = torch.rand(3, generator=g)
    adv = gae(rewards, values, dones, last, gamma=0.9, lam=1.0)
    ret = last.clone()
    for t in reversed(range(6)):
        ret = rewards[t] + 0.9 * ret
        assert torch.allclose(adv[t] + values[t], ret, atol=1e-6)


def test_reward_normalizer_scales_by_return_std_and_resets_at_episode_ends():
    norm = RewardNormalizer(num_envs=2, gamma=0.9)
    out = norm(np.array([10.0, -10.0]), np.array([True, False]))
    assert np.sign(out).tolist() == [1.0, -1.0] and np.all(np.abs(out) <= 10.0)
    assert norm.returns.tolist() == [0.0, -10.0]  # env 0's episode ended: its running return restarts
    state = norm.state_dict()
    other = RewardNormalizer(num_envs=2, gamma=0.9)
    other.load_state_dict(state)
    step = (np.array([1.0, 2.0]), np.array([False, False]))
    assert np.array_equal(norm(*step), other(*step))


def test_episode_stats_report_raw_returns_of_finished_episodes():
    stats = EpisodeStats(2)
    stats.step(np.array([1.0, 2.0]), np.array([False, False]))
    stats.step(np.array([3.0, 4.0]), np.array([True, False]))
    assert stats.pop() == ([4.0], [2])
    assert stats.pop() == ([], [])


def _bandit(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Dark or bright 8x8 frames; the rewarded action is 0 on dark frames and 1 on bright ones."""
    bright = torch.randint(0, 2, (n,), generator=gen)
    obs = (bright * 255).to(torch.uint8)[:, None, None, None].expand(n, 8, 8, 3).contiguous()
    return obs, bright


@pytest.mark.parametrize("arch", ["shared", "dual"])
def test_policy_phase_learns_a_contextual_bandit(arch, seeded_one_thread):
    """One-step episodes, reward 1 for the right action: the clipped policy gradient must find it."""
    agent = ActorCritic(TINY, num_actions=3, arch=arch)
    optimizer = torch.optim.Adam(agent.parameters(), lr=3e-3)
    settings = UpdateSettings(num_minibatches=2, policy_epochs=2, value_epochs=2, ent_coef=0.0)
    gen, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)

    def correct_prob() -> float:
        obs, target = _bandit(256, gen)
        with torch.no_grad():
            return float(torch.softmax(agent.logits(obs), -1).gather(1, target[:, None]).mean())

    before = correct_prob()
    for _ in range(40):
        obs, target = _bandit(64, gen)
        with torch.no_grad():
            logits, values, _ = agent(obs)
        probs = torch.softmax(logits, -1)
        actions = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        rewards = (actions == target).float()
        dones = torch.ones(64, dtype=torch.bool)
        adv = gae(rewards[None], values[None], dones[None], torch.zeros(64), 0.99, 0.95)[0]
        batch = {
            "obs": obs,
            "actions": actions,
            "logprobs": probs.gather(1, actions[:, None]).squeeze(1).log(),
            "values": values,
            "advantages": adv,
            "returns": adv + values,
        }
        policy_phase(agent, optimizer, batch, settings, rng)
    assert before < 0.45 and correct_prob() > 0.9


def _kl_and_aux_loss(agent, obs, old_logp, returns):
    with torch.no_grad():
        logits, _, aux = agent(obs)
        kl = (old_logp.exp() * (old_logp - F.log_softmax(logits, -1))).sum(-1).mean()
        return float(kl), float(0.5 * (aux - returns).pow(2).mean())


def _aux_run(beta_clone: float) -> tuple[float, float, float]:
    """(aux value loss before, after, KL(pi_old || pi) after) of one auxiliary phase on fixed data."""
    gen = torch.Generator().manual_seed(1)
    obs = torch.randint(0, 256, (256, 8, 8, 3), generator=gen, dtype=torch.uint8)
    returns = obs.float().mean(dim=(1, 2, 3)) / 64.0  # a learnable function of the frame
    torch.manual_seed(0)
    agent = ActorCritic(TINY, num_actions=4, arch="dual")
    torch.nn.init.orthogonal_(agent.pi.weight, 3.0)  # a policy with something to lose
    with torch.no_grad():
        old_logp = F.log_softmax(agent.logits(obs), -1)
    _, before = _kl_and_aux_loss(agent, obs, old_logp, returns)
    settings = UpdateSettings(aux_epochs=15, beta_clone=beta_clone)
    optimizer = torch.optim.Adam(agent.parameters(), lr=3e-3)
    aux_phase(agent, optimizer, obs, returns, settings, np.random.default_rng(0), torch.device("cpu"), 64)
    kl, after = _kl_and_aux_loss(agent, obs, old_logp, returns)
    return before, after, kl


def test_aux_phase_fits_values_and_the_clone_term_holds_the_policy(seeded_one_thread):
    before, after, kl_clone = _aux_run(beta_clone=1.0)
    _, after_free, kl_free = _aux_run(beta_clone=0.0)
    assert after < 0.5 * before and after_free < 0.5 * before  # the auxiliary value head learns
    assert kl_clone < 0.5 * kl_free  # and the behaviour-cloning term keeps the policy where it was


def test_aux_phase_needs_the_dual_architecture():
    agent = ActorCritic(TINY, num_actions=3, arch="shared")
    obs = torch.zeros(8, 8, 8, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="dual"):
        aux_phase(
            agent,
            torch.optim.Adam(agent.parameters()),
            obs,
            torch.zeros(8),
            UpdateSettings(),
            np.random.default_rng(0),
            torch.device("cpu"),
            4,
        )
