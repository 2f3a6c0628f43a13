"""FLAM's factorizer (paper section 4.2, Eqs. 2-3): slot attention over each frame's token features, then a
causal temporal attention layer so that every slot can read its own past values.

Shapes: B batch, T time, K slots, N tokens per frame, D width.

- ``SlotAttention`` (Locatello et al. 2020): K slots compete for the N tokens of one frame (softmax over
  slots), each is updated from the weighted mean of the tokens it won (GRU + residual MLP), for a few
  iterations. Slots start from K *learned embeddings* (the paper's choice, not Locatello's sampled
  Gaussian), so slot k is the same "seat" in every frame and the run is deterministic.
- ``Factorizer``: per-token input MLP, slot attention on all B*T frames at once (frames are independent
  here), then one causal ``TransformerLayer`` along time for each slot: slot k at time t attends to slot k
  at times <= t. With ``temporal=False`` (ablation "FLAM w/o factorizer temporal attention", section 5.4,
  appendix C.4) there is no temporal layer and, as the paper describes, the factorizer follows SAVi: frames
  are bound one after another and frame t's slots are initialised from frame t-1's slots (a fixed-length
  loop over T: unrolled by torch.compile, no data-dependent control flow).

``bind`` (one frame) and ``mix`` (the temporal layer) are exposed separately so an autoregressive rollout
binds each new frame once and re-runs only the cheap K-token temporal layer.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from model.blocks import MLP, TransformerLayer


class SlotAttention(nn.Module):
    """Slot attention over one frame. x: [B, N, D] (+ optional init [B, K, D]) -> (slots [B, K, D],
    attn [B, K, N]: the last iteration's assignment, softmax over K, so it sums to 1 over slots)."""

    def __init__(
        self, dim: int, num_slots: int, iters: int, mlp_ratio: float = 4.0, eps: float = 1e-8
    ) -> None:
        super().__init__()
        if iters < 1 or num_slots < 1:
            raise ValueError(f"slot attention needs iters >= 1 and num_slots >= 1, got {iters}, {num_slots}")
        self.dim, self.num_slots, self.iters, self.eps = dim, num_slots, iters, eps
        self.scale = dim**-0.5
        # Learned, distinct initial slots (paper: "slots are initialized from learned embeddings"); the
        # 1/sqrt(D) scale: each initial slot (the GRU's first hidden state) has norm ~1.
        self.slots_init = nn.Parameter(torch.randn(num_slots, dim) * dim**-0.5)
        self.norm_in = nn.LayerNorm(dim)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.norm_slots = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.gru = nn.GRUCell(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, init: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self.norm_in(x)
        k, v = self.to_k(x), self.to_v(x)  # [B, N, D], computed once for all iterations
        slots = self.slots_init.expand(x.shape[0], -1, -1) if init is None else init
        slots, attn = self._iterate(slots, k, v)
        for _ in range(self.iters - 1):  # fixed count: unrolled under torch.compile
            slots, attn = self._iterate(slots, k, v)
        return slots, attn

    def _iterate(self, slots: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """One round: slots [B, K, D], k/v [B, N, D] -> (slots [B, K, D], attn [B, K, N])."""
        q = self.to_q(self.norm_slots(slots)) * self.scale
        # Softmax over *slots*: tokens are the competed-for resource (the defining trait of slot
        # attention; plain attention would normalise over tokens).
        attn = torch.einsum("bkd,bnd->bkn", q, k).softmax(dim=1)
        weights = attn / (attn.sum(dim=-1, keepdim=True) + self.eps)  # weighted mean over tokens
        updates = torch.einsum("bkn,bnd->bkd", weights, v)
        new = self.gru(rearrange(updates, "b k d -> (b k) d"), rearrange(slots, "b k d -> (b k) d"))
        new = rearrange(new, "(b k) d -> b k d", k=self.num_slots)
        return new + self.mlp(self.norm_mlp(new)), attn


class Factorizer(nn.Module):
    """Token features x [B, T, N, D] -> (slots [B, T, K, D], attn [B, T, K, N]).

    Causal in time: slots at t depend on frames <= t only (both variants).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_slots: int,
        iters: int,
        max_frames: int,
        temporal: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.temporal, self.max_frames = temporal, max_frames
        # Per-token MLP between the linear feature embedding and slot attention (Locatello's encoder
        # head): FSQ vectors are only D=5..7 numbers, a linear map alone gives slot attention weak keys.
        self.norm_in = nn.LayerNorm(dim)
        self.mlp_in = MLP(dim, hidden=dim)  # hidden = D as in Locatello's: it runs on all N tokens
        self.slot_attn = SlotAttention(dim, num_slots, iters)
        if temporal:
            self.time_embed = nn.Parameter(torch.zeros(max_frames, dim))
            nn.init.trunc_normal_(self.time_embed, std=0.02)
            self.temporal_layer = TransformerLayer(dim, num_heads, dropout=dropout)

    def bind(self, x: Tensor, init: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Slot attention on single frames. x: [B, N, D], init: [B, K, D] or None (learned init) ->
        (slots before the temporal layer [B, K, D], attn [B, K, N])."""
        x = x + self.mlp_in(self.norm_in(x))
        return self.slot_attn(x, init)

    def bind_frames(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: [B, T, N, D] -> (per-frame slots before the temporal layer [B, T, K, D], attn [B, T, K, N])."""
        b, t = x.shape[:2]
        if self.temporal:  # frames are independent: bind all B*T of them in one batch
            slots, attn = self.bind(rearrange(x, "b t n d -> (b t) n d"))
            return (
                rearrange(slots, "(b t) k d -> b t k d", b=b),
                rearrange(attn, "(b t) k n -> b t k n", b=b),
            )
        # SAVi-style ablation: frame t starts from frame t-1's slots.
        slots_t, attns, init = [], [], None
        for i in range(t):
            init, a = self.bind(x[:, i], init)
            slots_t.append(init)
            attns.append(a)
        return torch.stack(slots_t, dim=1), torch.stack(attns, dim=1)

    def mix(self, slots: Tensor) -> Tensor:
        """Causal temporal layer, slot-wise: [B, T, K, D] -> [B, T, K, D] (identity when temporal=False).
        Slot k at time t attends to slot k at times <= t; time index 0 = first frame passed in."""
        if not self.temporal:
            return slots
        b, t = slots.shape[:2]
        if t > self.max_frames:
            raise ValueError(f"factorizer got {t} frames, more than max_frames={self.max_frames}")
        h = rearrange(slots + self.time_embed[:t, None], "b t k d -> (b k) t d")
        h = self.temporal_layer(h, causal=True)
        return rearrange(h, "(b k) t d -> b t k d", b=b)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        slots, attn = self.bind_frames(x)
        return self.mix(slots), attn
