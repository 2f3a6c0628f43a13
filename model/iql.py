"""Implicit Q-learning (Kostrikov et al. 2022) over world-model states, in a latent or a real action space.

Shapes: B batch, K entities (FLAM slots, or 1), D state width, A latent size per entity, M real actions.

The state s is the world model's state of a frame ([B, K, D], ``LatentActionWorldModel.states``). Actions:
- ``latent``: z [B, K, A] from the shared latent action space; the policy is a Gaussian with fixed variance
  over z, so its log-likelihood is a squared error; the networks are invariant (Q, V) or equivariant (the
  policy) to the order of the K entities, since slots come in no particular order;
- ``discrete``: real actions int [B] (the labelled-only baseline); the policy is a softmax.

Losses (the IQL paper's three, computed by ``IQLAgent.losses``):
    V:  expectile_loss(min(Q1', Q2')(s, a) - V(s), tau)                Q' = Polyak-averaged target nets
    Q:  (r + gamma * (1 - done) * V(s') - Q_i(s, a))^2,  i = 1, 2
    pi: -advantage_weights(min(Q1', Q2')(s, a) - V(s)) * log pi(a | s)  (weights = 1: behaviour cloning)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from model.action_decoder import ActionDecoder, ActionDecoderConfig
from model.action_encoder import ActionEncoder, ActionEncoderConfig

ACTION_SPACES = ("latent", "discrete")


def expectile_loss(diff: Tensor, tau: float) -> Tensor:
    """mean(|tau - 1(diff < 0)| * diff^2): tau = 0.5 is half the MSE; tau -> 1 fits an upper expectile of
    the targets (diff = target - prediction)."""
    weight = torch.where(diff < 0, 1.0 - tau, tau)
    return (weight * diff.square()).mean()


def advantage_weights(advantage: Tensor, temperature: float, max_weight: float) -> Tensor:
    """exp(temperature * advantage), capped at ``max_weight`` (IQL's 100) for stability; no gradient."""
    return torch.exp(temperature * advantage.detach()).clamp(max=max_weight)


def td_target(rewards: Tensor, dones: Tensor, next_value: Tensor, gamma: float) -> Tensor:
    """r + gamma * (1 - done) * V(s'), no gradient into V."""
    return rewards + gamma * (1.0 - dones.float()) * next_value.detach()


@dataclass(frozen=True)
class IQLConfig:
    steps: int = 20000
    batch_size: int = 256
    lr: float = 3e-4
    gamma: float = 0.99
    expectile: float = 0.7  # tau
    temperature: float = 3.0  # beta of the advantage weights
    max_weight: float = 100.0
    polyak: float = 0.005  # target-network step
    dim: int = 128  # width of every network
    num_heads: int = 4

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"iql: steps and batch_size must be >= 1 and lr > 0, got {self}")
        if not 0 < self.expectile < 1 or not 0 <= self.gamma < 1 or not 0 < self.polyak <= 1:
            raise ValueError(f"iql: need 0 < expectile < 1, 0 <= gamma < 1, 0 < polyak <= 1, got {self}")
        if self.temperature < 0 or self.max_weight <= 0:
            raise ValueError(f"iql: temperature must be >= 0 and max_weight > 0, got {self}")


class LatentPolicy(nn.Module):
    """states [B, K, D] -> latent actions [B, K, A] (the Gaussian's mean), equivariant over K: the action
    encoder's network with a single, constant action."""

    def __init__(self, state_dim: int, latent_dim: int, cfg: ActionEncoderConfig) -> None:
        super().__init__()
        self.net = ActionEncoder(1, state_dim, latent_dim, cfg)

    def forward(self, states: Tensor) -> Tensor:
        return self.net(torch.zeros(states.shape[0], dtype=torch.long, device=states.device), states)


class IQLAgent(nn.Module):
    """Twin Q nets, their Polyak targets, a value net and a policy; ``act`` is the policy's mode."""

    def __init__(self, space: str, state_dim: int, action_size: int, cfg: IQLConfig) -> None:
        super().__init__()
        if space not in ACTION_SPACES:
            raise ValueError(f"IQL action space {space!r} unknown; choose one of {ACTION_SPACES}")
        self.space, self.cfg, self.action_size = space, cfg, action_size
        net = ActionDecoderConfig(dim=cfg.dim, num_heads=cfg.num_heads)
        if space == "latent":  # Q(s, z): the pair per entity, pooled; one output
            q_in, q_out = state_dim + action_size, 1
            self.policy: nn.Module = LatentPolicy(
                state_dim, action_size, ActionEncoderConfig(dim=cfg.dim, num_heads=cfg.num_heads)
            )
        else:  # Q(s, .): one output per real action
            q_in, q_out = state_dim, action_size
            self.policy = ActionDecoder(state_dim, action_size, net)
        self.q1, self.q2 = ActionDecoder(q_in, q_out, net), ActionDecoder(q_in, q_out, net)
        self.value = ActionDecoder(state_dim, 1, net)
        self.target_q1, self.target_q2 = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        for p in (*self.target_q1.parameters(), *self.target_q2.parameters()):
            p.requires_grad_(False)

    def _q(self, q: nn.Module, states: Tensor, actions: Tensor) -> Tensor:
        """Q(s, a) [B]."""
        if self.space == "latent":
            return q(torch.cat([states, actions.to(states.dtype)], dim=-1))[:, 0]
        return q(states).gather(1, actions.long()[:, None])[:, 0]

    def losses(self, batch: dict[str, Tensor], bc: bool = False) -> dict[str, Tensor]:
        """batch: states, next_states [B, K, D], actions ([B, K, A] or int [B]), rewards [B], dones [B].
        -> value, q, policy losses (scalars) and the mean advantage. ``bc``: unit weights (plain BC)."""
        cfg, s, a = self.cfg, batch["states"], batch["actions"]
        with torch.no_grad():
            q_target = torch.minimum(self._q(self.target_q1, s, a), self._q(self.target_q2, s, a))
            next_v = self.value(batch["next_states"])[:, 0]
        v = self.value(s)[:, 0]
        value_loss = expectile_loss(q_target - v, cfg.expectile)
        target = td_target(batch["rewards"], batch["dones"], next_v, cfg.gamma)
        q_loss = F.mse_loss(self._q(self.q1, s, a), target) + F.mse_loss(self._q(self.q2, s, a), target)
        advantage = q_target - v.detach()
        weights = (
            torch.ones_like(advantage)
            if bc
            else advantage_weights(advantage, cfg.temperature, cfg.max_weight)
        )
        if self.space == "latent":
            nll = (self.policy(s) - a.float()).square().mean(dim=(-1, -2))  # fixed-variance Gaussian
        else:
            nll = F.cross_entropy(self.policy(s), a.long(), reduction="none")
        return {
            "value": value_loss,
            "q": q_loss,
            "policy": (weights * nll).mean(),
            "advantage": advantage.mean(),
        }

    @torch.no_grad()
    def update_targets(self) -> None:
        for net, target in ((self.q1, self.target_q1), (self.q2, self.target_q2)):
            for p, t in zip(net.parameters(), target.parameters(), strict=True):
                t.lerp_(p, self.cfg.polyak)

    @torch.no_grad()
    def act(self, states: Tensor) -> Tensor:
        """The policy's mode: latents [B, K, A], or real actions int64 [B]."""
        out = self.policy(states)
        return out if self.space == "latent" else out.argmax(-1)
