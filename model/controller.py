"""Controller: known actions -> a frozen world model's latent actions (paper 003, Garrido et al.: "a
lightweight controller module, an MLP or a cross-attention based adapter, trained with an L2 loss to predict
the latent action produced by the inverse dynamics model"). Trained by ``train/controller.py``.

Shapes: B examples, I = one-hot action inputs (actors x actions), S state tokens of width Ds (the world
model's ``states``: K slots or N embedded patch tokens), W controller width, O = numbers predicted (one
latent action A, or K' * A).

``depth``: hidden layers of the MLP, self-attention layers of the adapter.

- ``mlp``: the embedded action through an MLP. It sees the action only, so an action whose effect depends
  on the state (MultiGrid's ``forward`` moves the agent along its heading) maps to the average latent.
- ``adapter``: self-attention over the current state tokens, then cross-attention from the embedded action
  (the query) to them; for a factored model the query also carries the acting slot's own token (``focus``),
  which tells the adapter whose latent it predicts.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.blocks import CrossAttentionLayer, TransformerLayer

KINDS = ("mlp", "adapter")


class Controller(nn.Module):
    """actions one-hot [B, I] (+ state [B, S, Ds], + focus int [B]: the acting token) -> latents [B, O]."""

    def __init__(
        self,
        kind: str,
        action_inputs: int,
        out_dim: int,
        state_dim: int,
        width: int = 128,
        depth: int = 2,
        num_heads: int = 4,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"controller kind {kind!r} unknown; choose one of {KINDS}")
        if min(action_inputs, out_dim, state_dim, width, depth, num_heads) < 1 or width % num_heads:
            raise ValueError(
                f"controller sizes must be >= 1 and width ({width}) divisible by num_heads ({num_heads})"
            )
        self.kind = kind
        self.embed_action = nn.Linear(action_inputs, width)
        if kind == "mlp":
            layers: list[nn.Module] = []
            for _ in range(depth):
                layers += [nn.GELU(), nn.Linear(width, width)]
            self.body = nn.Sequential(*layers)
        else:
            self.state_in = nn.Linear(state_dim, width)
            self.self_attn = nn.ModuleList(TransformerLayer(width, num_heads) for _ in range(depth))
            self.cross = CrossAttentionLayer(width, num_heads)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, out_dim))

    @property
    def reads_state(self) -> bool:
        return self.kind == "adapter"

    def forward(self, actions: Tensor, state: Tensor | None = None, focus: Tensor | None = None) -> Tensor:
        q = self.embed_action(actions)  # [B, W]
        if self.kind == "mlp":
            return self.head(self.body(q))
        if state is None:
            raise ValueError("the adapter controller reads the state: pass state [B, S, Ds]")
        s = self.state_in(state)  # [B, S, W]
        for layer in self.self_attn:
            s = layer(s)
        if focus is not None:
            q = q + s[torch.arange(len(s), device=s.device), focus]  # the acting token's own value
        return self.head(self.cross(q[:, None], s)[:, 0])
