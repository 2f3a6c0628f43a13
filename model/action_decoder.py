"""Action decoder: a world model's latent actions of one transition -> the real action (paper section 4.3).

Shapes: B batch, K latents per transition (FLAM: one per slot; Genie / AdaWorld: K = 1), A latent size,
D decoder width, M real actions (Procgen: 15).

FLAM's slots come in no particular order (slot k of one clip need not be slot k of the next), so the
decoder must not depend on it: each latent is embedded by the same MLP, the K embeddings attend to each
other with no position information (permutation equivariant, so the player's latent can be read against
the others'), and a learned query pools them by attention (invariant). Swapping slots gives the same
logits up to float rounding. A monolithic model's single latent goes through the same path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from model.blocks import MLP, CrossAttentionLayer, TransformerLayer


@dataclass(frozen=True)
class ActionDecoderConfig:
    dim: int = 128
    num_heads: int = 4
    depth: int = 1  # self-attention layers across the K latents before pooling


class ActionDecoder(nn.Module):
    """latents [B, K, A] -> logits [B, M], invariant to the order of the K latents."""

    def __init__(self, latent_dim: int, num_actions: int, cfg: ActionDecoderConfig = ActionDecoderConfig()):
        super().__init__()
        if latent_dim < 1:
            raise ValueError(
                f"the world model has no latent actions (latent size {latent_dim}): an action decoder needs "
                "a latent action model (flam, genie, adaworld, playslot)"
            )
        self.latent_dim, self.num_actions = latent_dim, num_actions
        self.embed = nn.Sequential(nn.Linear(latent_dim, cfg.dim), MLP(cfg.dim))
        self.mix = nn.ModuleList(TransformerLayer(cfg.dim, cfg.num_heads) for _ in range(cfg.depth))
        self.query = nn.Parameter(torch.randn(1, 1, cfg.dim) * 0.02)
        self.pool = CrossAttentionLayer(cfg.dim, cfg.num_heads)
        self.norm = nn.LayerNorm(cfg.dim)
        self.out = nn.Linear(cfg.dim, num_actions)

    def forward(self, latents: Tensor) -> Tensor:
        if latents.ndim != 3 or latents.shape[-1] != self.latent_dim:
            raise ValueError(f"latents must be [B, K, {self.latent_dim}], got {tuple(latents.shape)}")
        x = self.embed(latents.float())  # [B, K, D]
        for layer in self.mix:
            x = layer(x)  # no position embedding: permutation equivariant over K
        pooled = self.pool(self.query.expand(x.shape[0], -1, -1), x)  # [B, 1, D], invariant over K
        return self.out(self.norm(pooled[:, 0]))
