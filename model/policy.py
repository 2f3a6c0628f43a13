"""Policy networks on Procgen's 64x64 view (paper section 5.3, appendix C.3): the RL expert, the
behaviour-cloning policy and the supervised inverse dynamics model share one IMPALA CNN.

Shapes: B batch, H = W = 64 observation side, C = 3 * frames channels, A = number of actions (15).

- ``ImpalaCNN``: uint8 observations [B, H, W, C] -> features [B, hidden] (Espeholt et al. 2018: stages of
  conv, max-pool /2 and two residual blocks at widths 16, 32, 32, then ReLU -> Linear -> ReLU to 256).
- ``PolicyNet``: ImpalaCNN + a linear policy head -> logits [B, A]. The BC policy, and (with
  ``in_frames=2``, observations t and t+1 stacked on channels) the supervised IDM.
- ``ActorCritic``: the expert. ``arch="dual"`` is Phasic Policy Gradient's (Cobbe et al. 2021): a policy
  network (policy head + auxiliary value head) and a separate value network; ``arch="shared"`` is PPO's
  usual single trunk with both heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from model.blocks import impala_stages

ARCHS = ("dual", "shared")


@dataclass(frozen=True)
class PolicyNetConfig:
    """IMPALA CNN sizes. Saved in every policy checkpoint; rebuild from there."""

    channels: tuple[int, ...] = (16, 32, 32)
    hidden: int = 256
    num_res_blocks: int = 2
    obs_size: int = 64

    def __post_init__(self) -> None:
        if not self.channels or min(self.channels) < 1 or self.hidden < 1 or self.num_res_blocks < 0:
            raise ValueError(
                f"policy net channels must be positive widths and hidden >= 1, got channels={self.channels}, "
                f"hidden={self.hidden}, num_res_blocks={self.num_res_blocks}"
            )
        if self.obs_size < 2 ** len(self.channels):
            raise ValueError(f"obs_size {self.obs_size} is too small for {len(self.channels)} stages")

    @property
    def grid(self) -> int:
        """Feature map side after the stages (each max-pool halves it, rounding up)."""
        side = self.obs_size
        for _ in self.channels:
            side = (side + 1) // 2
        return side


class ImpalaCNN(nn.Module):
    """uint8 [B, H, W, 3 * in_frames] in [0, 255] -> float [B, hidden]."""

    def __init__(self, cfg: PolicyNetConfig, in_frames: int = 1) -> None:
        super().__init__()
        self.cfg, self.in_channels = cfg, 3 * in_frames
        layers = impala_stages(self.in_channels, tuple(cfg.channels), cfg.num_res_blocks)
        flat = cfg.channels[-1] * cfg.grid**2
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.ReLU(), nn.Linear(flat, cfg.hidden), nn.ReLU())

    def forward(self, obs: Tensor) -> Tensor:
        s = self.cfg.obs_size
        if obs.dtype != torch.uint8 or obs.ndim != 4 or tuple(obs.shape[1:]) != (s, s, self.in_channels):
            raise ValueError(
                f"observations must be uint8 [B, {s}, {s}, {self.in_channels}], got {obs.dtype} "
                f"{tuple(obs.shape)}"
            )
        return self.net(obs.permute(0, 3, 1, 2).float() / 255.0)


def _head(hidden: int, out: int, gain: float) -> nn.Linear:
    """A linear head with a small orthogonal init: the untrained policy is near uniform, values near 0."""
    layer = nn.Linear(hidden, out)
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class PolicyNet(nn.Module):
    """IMPALA CNN -> action logits. obs uint8 [B, 64, 64, 3 * in_frames] -> logits [B, A]."""

    def __init__(self, cfg: PolicyNetConfig, num_actions: int, in_frames: int = 1) -> None:
        super().__init__()
        self.cfg, self.num_actions, self.in_frames = cfg, num_actions, in_frames
        self.encoder = ImpalaCNN(cfg, in_frames)
        self.pi = _head(cfg.hidden, num_actions, 0.01)

    def forward(self, obs: Tensor) -> Tensor:
        return self.pi(self.encoder(obs))

    def logits(self, obs: Tensor) -> Tensor:
        return self(obs)


class ActorCritic(nn.Module):
    """The RL expert. ``forward(obs)`` -> logits [B, A], value [B], aux_value [B] (dual) or None (shared).

    dual (PPG): policy network = encoder -> (pi, aux_value); value network = value_encoder -> value; the
    policy phase trains pi on the clipped objective and the value network on returns, the auxiliary
    phase distils values into aux_value while a KL term keeps pi where it was.
    shared (PPO): one encoder -> (pi, value); the value loss also shapes the encoder.
    """

    def __init__(self, cfg: PolicyNetConfig, num_actions: int, arch: str = "dual") -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown actor-critic arch {arch!r}; choose one of {ARCHS} (expert.arch)")
        self.cfg, self.num_actions, self.arch = cfg, num_actions, arch
        self.encoder = ImpalaCNN(cfg)
        self.pi = _head(cfg.hidden, num_actions, 0.01)
        self.value_encoder = ImpalaCNN(cfg) if arch == "dual" else None
        self.v = _head(cfg.hidden, 1, 0.1)
        self.aux_v = _head(cfg.hidden, 1, 0.1) if arch == "dual" else None

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        h = self.encoder(obs)
        logits = self.pi(h)
        if self.value_encoder is None:
            return logits, self.v(h).squeeze(-1), None
        value = self.v(self.value_encoder(obs)).squeeze(-1)
        return logits, value, self.aux_v(h).squeeze(-1)

    def logits(self, obs: Tensor) -> Tensor:
        """Policy logits only (acting, demos, evaluation): the value network is not run."""
        return self.pi(self.encoder(obs))

    def value(self, obs: Tensor) -> Tensor:
        """State values [B] (bootstrapping the last step of a rollout)."""
        encoder = self.value_encoder if self.value_encoder is not None else self.encoder
        return self.v(encoder(obs)).squeeze(-1)
