"""Action encoder: a real action into the world model's latent action space (LAWM-style, paper 004).

Shapes: B batch, K entities (FLAM: slots; a monolithic model: K = 1, the pooled frame), D state width (the
world model's ``dim``), A latent size per entity, M real actions (Procgen: 15), E encoder width.

The IDM infers one latent per slot from two frames; the encoder must produce the same latents from the
current state and the action alone, so that labelled and unlabelled transitions drive one dynamics model
(``model/lawm.py``). Which slot the acting entity occupies is not known (slots are unordered), so the
encoder does not pick one: it writes a latent for every slot, conditioned on that slot's state and on the
action, with attention across the slots and no slot positions (permutation equivariant). It learns to put
the action's effect into the acting entity's slot and each other slot's own motion into the rest.

``invert`` maps a latent back to a real action by trying all M actions: the encoder inverse.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from model.blocks import MLP, TransformerLayer


@dataclass(frozen=True)
class ActionEncoderConfig:
    dim: int = 128  # E
    num_heads: int = 4
    depth: int = 1  # attention layers across the K entities

    def __post_init__(self) -> None:
        if self.dim < 1 or self.depth < 0 or self.num_heads < 1 or self.dim % self.num_heads:
            raise ValueError(f"action encoder: dim must be a positive multiple of num_heads, got {self}")


class ActionEncoder(nn.Module):
    """(actions int [B], states [B, K, D]) -> latents [B, K, A], equivariant to the order of the K."""

    def __init__(
        self,
        num_actions: int,
        state_dim: int,
        latent_dim: int,
        cfg: ActionEncoderConfig = ActionEncoderConfig(),
    ) -> None:
        super().__init__()
        if num_actions < 1 or state_dim < 1 or latent_dim < 1:
            raise ValueError(
                f"action encoder needs num_actions, state_dim and latent_dim >= 1, got {num_actions}, "
                f"{state_dim}, {latent_dim} (a world model without latent actions cannot be aligned)"
            )
        self.num_actions, self.state_dim, self.latent_dim = num_actions, state_dim, latent_dim
        self.action_embed = nn.Embedding(num_actions, cfg.dim)
        self.state_in = nn.Linear(state_dim, cfg.dim)
        self.mlp = MLP(cfg.dim)
        self.mix = nn.ModuleList(TransformerLayer(cfg.dim, cfg.num_heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.out = nn.Linear(cfg.dim, latent_dim)

    def forward(self, actions: Tensor, states: Tensor) -> Tensor:
        if states.ndim != 3 or states.shape[-1] != self.state_dim:
            raise ValueError(f"states must be [B, K, {self.state_dim}], got {tuple(states.shape)}")
        if actions.shape != states.shape[:1]:
            raise ValueError(f"actions must be [B] = [{states.shape[0]}], got {tuple(actions.shape)}")
        if actions.numel() and not 0 <= int(actions.min()) <= int(actions.max()) < self.num_actions:
            raise ValueError(
                f"actions must lie in [0, {self.num_actions}), got {actions.min()}..{actions.max()}"
            )
        x = self.state_in(states.float()) + self.action_embed(actions.long())[:, None]  # [B, K, E]
        x = x + self.mlp(x)
        for layer in self.mix:
            x = layer(x)  # no position embedding: permutation equivariant over K
        return self.out(self.norm(x))

    def all_actions(self, states: Tensor) -> Tensor:
        """Latents of every real action: states [B, K, D] -> [B, M, K, A]."""
        b, m = states.shape[0], self.num_actions
        actions = torch.arange(m, device=states.device).repeat(b)  # [B*M]
        z = self(actions, states.repeat_interleave(m, dim=0))
        return z.view(b, m, *z.shape[1:])

    @torch.no_grad()
    def invert(self, states: Tensor, latents: Tensor) -> Tensor:
        """The encoder inverse: the real action whose latent is nearest (squared distance over K and A).
        states [B, K, D], latents [B, K, A] -> actions int64 [B]."""
        dist = (self.all_actions(states) - latents[:, None].float()).square().sum(dim=(-1, -2))  # [B, M]
        return dist.argmin(-1)


def alignment_loss(encoded: Tensor, idm_latents: Tensor, labelled: Tensor) -> Tensor:
    """Mean squared distance between encoded actions and the (stop-gradient) IDM latents on labelled
    transitions. encoded, idm_latents [B, K, A]; labelled bool [B] -> scalar (0 when none is labelled).
    Only the encoder moves: the IDM is the teacher here, its own training is the world-model loss."""
    if encoded.shape != idm_latents.shape:
        raise ValueError(f"encoded {tuple(encoded.shape)} and IDM latents {tuple(idm_latents.shape)} differ")
    per_step = (encoded.float() - idm_latents.detach().float()).square().mean(dim=(-1, -2))  # [B]
    weight = labelled.float()
    return (per_step * weight).sum() / weight.sum().clamp(min=1.0)
