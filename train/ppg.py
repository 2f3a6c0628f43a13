"""Phasic Policy Gradient and PPO, the parts that need no environment: advantages, reward normalisation,
episode bookkeeping, the policy-phase update and PPG's auxiliary phase (Cobbe et al. 2021; Schulman
et al. 2017). ``train/expert.py`` runs them on Procgen.

Shapes: T steps per rollout, N parallel envs, B = T * N samples, A actions; observations uint8
[..., 64, 64, 3]. Convention of the rollout buffers (gym3 semantics): ``dones[t]`` is True when the
episode ended with the action taken at step t (the observation after it starts a new episode), so the
value of step t + 1 does not bootstrap step t.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from model.policy import ActorCritic


def gae(
    rewards: Tensor, values: Tensor, dones: Tensor, last_value: Tensor, gamma: float, lam: float
) -> Tensor:
    """Generalised advantage estimates [T, N] from rewards, values, dones [T, N] and the value of the
    observation after the last step, last_value [N]:
    delta_t = r_t + gamma * V_{t+1} * (1 - d_t) - V_t;  A_t = delta_t + gamma * lam * (1 - d_t) * A_{t+1}."""
    steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(last_value)
    for t in reversed(range(steps)):
        next_value = last_value if t == steps - 1 else values[t + 1]
        live = 1.0 - dones[t].float()
        delta = rewards[t] + gamma * next_value * live - values[t]
        running = delta + gamma * lam * live * running
        advantages[t] = running
    return advantages


class RunningMeanStd:
    """Mean and variance of a stream of numbers (parallel Welford update), float64."""

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4

    def update(self, x: np.ndarray) -> None:
        batch_mean, batch_var, n = float(np.mean(x)), float(np.var(x)), x.size
        delta, total = batch_mean - self.mean, self.count + n
        self.mean += delta * n / total
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.var, self.count = m2 / total, total

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]


class RewardNormalizer:
    """Scale rewards by the running std of the discounted return (as baselines' VecNormalize, which the
    PPG and PPO Procgen results use), then clip. Rewards are not centred: their sign is kept."""

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, eps: float = 1e-8) -> None:
        self.gamma, self.clip, self.eps = gamma, clip, eps
        self.returns = np.zeros(num_envs, np.float64)
        self.stats = RunningMeanStd()

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        """rewards, dones [N] of one step -> normalised rewards [N] float32."""
        self.returns = self.returns * self.gamma + rewards
        self.stats.update(self.returns)
        self.returns[dones] = 0.0
        scaled = rewards / np.sqrt(self.stats.var + self.eps)
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        # tensors and floats only: checkpoints load with torch.load(weights_only=True)
        return {"returns": torch.from_numpy(self.returns.copy()), "stats": self.stats.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.returns = np.array(state["returns"], np.float64)
        self.stats.load_state_dict(state["stats"])


class EpisodeStats:
    """Raw (unnormalised) return and length of every env's current episode; completed ones are collected
    until ``pop``."""

    def __init__(self, num_envs: int) -> None:
        self.returns = np.zeros(num_envs, np.float64)
        self.lengths = np.zeros(num_envs, np.int64)
        self.done_returns: list[float] = []
        self.done_lengths: list[int] = []

    def step(self, rewards: np.ndarray, dones: np.ndarray) -> None:
        self.returns += rewards
        self.lengths += 1
        for i in np.flatnonzero(dones):
            self.done_returns.append(float(self.returns[i]))
            self.done_lengths.append(int(self.lengths[i]))
        self.returns[dones], self.lengths[dones] = 0.0, 0

    def pop(self) -> tuple[list[float], list[int]]:
        out = (self.done_returns, self.done_lengths)
        self.done_returns, self.done_lengths = [], []
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "returns": torch.from_numpy(self.returns.copy()),
            "lengths": torch.from_numpy(self.lengths.copy()),
            "done_returns": list(self.done_returns),
            "done_lengths": list(self.done_lengths),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.returns = np.array(state["returns"], np.float64)
        self.lengths = np.array(state["lengths"], np.int64)
        self.done_returns, self.done_lengths = list(state["done_returns"]), list(state["done_lengths"])


@dataclass(frozen=True)
class UpdateSettings:
    """What the updates need from ``ExpertConfig`` (kept apart so the updates test without a config)."""

    clip: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    num_minibatches: int = 8
    policy_epochs: int = 1  # PPG E_pi; PPO's epochs
    value_epochs: int = 1  # PPG E_V (PPO: the value head trains with the policy)
    aux_epochs: int = 6  # PPG E_aux
    beta_clone: float = 1.0


def clipped_policy_loss(
    logits: Tensor, actions: Tensor, old_logprob: Tensor, advantages: Tensor, clip: float
):
    """PPO's clipped surrogate: -E[min(r A, clip(r, 1 - eps, 1 + eps) A)], r = pi(a|s) / pi_old(a|s).
    logits [B, A], actions / old_logprob / advantages [B] -> (loss, entropy, approx KL, clip fraction)."""
    logp_all = F.log_softmax(logits.float(), dim=-1)
    logprob = logp_all.gather(1, actions[:, None]).squeeze(1)
    log_ratio = logprob - old_logprob
    ratio = log_ratio.exp()
    loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip)).mean()
    entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clip_frac = ((ratio - 1).abs() > clip).float().mean()
    return loss, entropy, approx_kl, clip_frac


def clipped_value_loss(values: Tensor, returns: Tensor, old_values: Tensor, clip: float) -> Tensor:
    """0.5 * E[max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)] (PPO's value clipping)."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2).mean()


def policy_phase(
    agent: ActorCritic,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, Tensor],
    settings: UpdateSettings,
    rng: np.random.Generator,
) -> dict[str, float]:
    """PPO-style epochs over one rollout. batch (flattened to B samples, on the agent's device): obs
    uint8 [B, H, W, C], actions [B], logprobs [B], values [B], advantages [B], returns [B].

    Advantages are normalised over the whole batch (as in the PPG code). Epoch e trains the policy while
    e < policy_epochs and the value network while e < value_epochs; under "shared" both use one loss.
    Returns the last minibatch's losses."""
    b = batch["obs"].shape[0]
    size = b // settings.num_minibatches
    if size < 1:
        raise ValueError(
            f"a rollout of {b} samples cannot be cut into {settings.num_minibatches} minibatches"
        )
    adv = batch["advantages"]
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    stats: dict[str, Tensor] = {}
    for epoch in range(max(settings.policy_epochs, settings.value_epochs)):
        train_pi, train_v = epoch < settings.policy_epochs, epoch < settings.value_epochs
        order = torch.from_numpy(rng.permutation(b)).to(adv.device)
        for start in range(0, size * settings.num_minibatches, size):
            idx = order[start : start + size]
            logits, values, _ = agent(batch["obs"][idx])
            pg, entropy, kl, clip_frac = clipped_policy_loss(
                logits, batch["actions"][idx], batch["logprobs"][idx], adv[idx], settings.clip
            )
            v_loss = clipped_value_loss(
                values.float(), batch["returns"][idx], batch["values"][idx], settings.clip
            )
            loss = (pg - settings.ent_coef * entropy) * train_pi + settings.vf_coef * v_loss * train_v
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(agent.parameters(), settings.max_grad_norm)
            optimizer.step()
            stats = {"policy_loss": pg.detach(), "value_loss": v_loss.detach(), "entropy": entropy.detach()}
            stats["approx_kl"] = kl
            stats["clip_frac"] = clip_frac
    return {k: float(v) for k, v in stats.items()}


def aux_phase(
    agent: ActorCritic,
    optimizer: torch.optim.Optimizer,
    obs: Tensor,
    returns: Tensor,
    settings: UpdateSettings,
    rng: np.random.Generator,
    device: torch.device,
    minibatch: int,
) -> dict[str, float]:
    """PPG's auxiliary phase over the last N_pi rollouts: obs uint8 [M, H, W, C] and returns [M] (on the
    CPU; minibatches move to ``device``). Each of ``aux_epochs`` epochs minimises, per minibatch,
    0.5 (V_aux - R)^2 + beta_clone * KL(pi_old || pi) on the policy network and 0.5 (V - R)^2 on the
    value network, where pi_old is the policy at the start of the phase. Returns mean losses of the
    last epoch."""
    if agent.arch != "dual":
        raise ValueError("the auxiliary phase needs PPG's dual networks (expert.algo=ppg)")
    m = obs.shape[0]
    with torch.no_grad():  # the policy to stay close to, computed once before any aux step
        old_logp = torch.cat(
            [
                F.log_softmax(agent.logits(obs[i : i + minibatch].to(device)).float(), -1).cpu()
                for i in range(0, m, minibatch)
            ]
        )
    sums: dict[str, float] = {}
    for _ in range(settings.aux_epochs):
        order = torch.from_numpy(rng.permutation(m))
        sums = {"aux_value_loss": 0.0, "clone_kl": 0.0, "aux_real_value_loss": 0.0}
        count = 0
        for start in range(0, m, minibatch):
            idx = order[start : start + minibatch]
            o, r, old = obs[idx].to(device), returns[idx].to(device), old_logp[idx].to(device)
            logits, values, aux_values = agent(o)
            logp = F.log_softmax(logits.float(), -1)
            kl = (old.exp() * (old - logp)).sum(-1).mean()
            aux_loss = 0.5 * (aux_values.float() - r).pow(2).mean()
            real_loss = 0.5 * (values.float() - r).pow(2).mean()
            loss = aux_loss + settings.beta_clone * kl + real_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(agent.parameters(), settings.max_grad_norm)
            optimizer.step()
            for key, value in zip(sums, (aux_loss, kl, real_loss), strict=True):
                sums[key] += value.item()
            count += 1
        sums = {k: v / max(count, 1) for k, v in sums.items()}
    return sums
