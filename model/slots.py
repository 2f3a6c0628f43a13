"""FLAM's factorizer (paper section 4.2, Eqs. 2-3): slot attention over each frame's token features with a
causal temporal attention layer *inside every slot-attention iteration*, so that a slot keeps binding to the
same entity ("for each slot attention iteration: (2), (3)").

Shapes: B batch, T time, K slots, N tokens per frame, D width, W = ``max_frames`` (the trained window).

- ``SlotAttention`` (Locatello et al. 2020): K slots compete for the N tokens of one frame (softmax over
  slots), each is updated from the weighted mean of the tokens it won (GRU + residual MLP). Slots start from
  K *learned embeddings* (the paper's choice, not Locatello's sampled Gaussian), so slot k is the same "seat"
  in every frame and the run is deterministic. ``iterate`` is one round (Eq. 2).
- ``Factorizer``: per-token input MLP, then ``iters`` rounds of [slot attention on all B*T frames at once
  (Eq. 2), then one causal ``TransformerLayer`` along time for each slot (Eq. 3): slot k at time t attends to
  slot k at times <= t]. Run in parallel over T with a causal mask: the result equals running the frames one
  after another, because frame t's round i reads only rounds <= i of frames <= t. Since the temporal layer
  sits inside the loop, frame t's queries in round i+1 already carry the slot's own past, and the
  token-to-slot assignment of frame t depends on the frames before it (the binding is sticky, the mechanism
  the paper's Table 7 credits with D 0.91 vs 0.33). One temporal layer is shared by all rounds, as the slot
  attention's GRU and MLP are.
- Time: a learned embedding per position in the window (index 0 = the window's first frame), added to the
  temporal layer's input only. The table has exactly ``max_frames`` rows and the trainer trains on windows of
  ``max_frames`` frames (``train/config.py`` refuses anything else), so every row gets a gradient. Longer
  sequences (evaluation rollouts, inference over whole clips) slide: frame t's slots are computed in the
  window of the ``max_frames`` frames ending at t, the same view frame ``max_frames - 1`` has in training.
- ``temporal=False`` (ablation "FLAM w/o factorizer temporal attention", section 5.4, appendix C.4): no
  temporal layer; as the paper describes, the factorizer follows SAVi: frames are bound one after another
  and frame t's slots are initialised from frame t-1's slots (a fixed-length loop over T: unrolled by
  torch.compile, no data-dependent control flow). It has no window: it runs over any length.
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
        k, v = self.keys_values(x)
        slots = self.initial(x.shape[0]) if init is None else init
        for _ in range(self.iters):  # fixed count: unrolled under torch.compile
            slots, attn = self.iterate(slots, k, v)
        return slots, attn

    def initial(self, batch: int) -> Tensor:
        """The learned initial slots, [batch, K, D]."""
        return self.slots_init.expand(batch, -1, -1)

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, N, D] -> keys, values [B, N, D]: computed once, shared by every iteration."""
        x = self.norm_in(x)
        return self.to_k(x), self.to_v(x)

    def iterate(self, slots: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """One round (Eq. 2): slots [B, K, D], k/v [B, N, D] -> (slots [B, K, D], attn [B, K, N])."""
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

    Causal in time: slots at t depend on frames <= t only (both variants). See the module docstring.
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
        self.temporal, self.max_frames, self.iters = temporal, max_frames, iters
        # Per-token MLP between the linear feature embedding and slot attention (Locatello's encoder
        # head): FSQ vectors are only D=5..7 numbers, a linear map alone gives slot attention weak keys.
        self.norm_in = nn.LayerNorm(dim)
        self.mlp_in = MLP(dim, hidden=dim)  # hidden = D as in Locatello's: it runs on all N tokens
        self.slot_attn = SlotAttention(dim, num_slots, iters)
        if temporal:
            self.time_embed = nn.Parameter(torch.zeros(max_frames, dim))
            nn.init.trunc_normal_(self.time_embed, std=0.02)
            self.temporal_layer = TransformerLayer(dim, num_heads, dropout=dropout)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x + self.mlp_in(self.norm_in(x))
        if not self.temporal:
            return self._savi(x)
        if x.shape[1] <= self.max_frames:
            return self._window(x)
        return self._sliding(x)

    def _window(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Temporal factorizer over one window, T <= max_frames: x [B, T, N, D] -> slots, attn."""
        b, t = x.shape[:2]
        k, v = self.slot_attn.keys_values(rearrange(x, "b t n d -> (b t) n d"))
        slots = self.slot_attn.initial(b * t)
        for _ in range(self.iters):  # Eq. 2 on every frame, then Eq. 3 along time, in each round
            slots, attn = self.slot_attn.iterate(slots, k, v)
            slots = rearrange(self.mix(rearrange(slots, "(b t) k d -> b t k d", b=b)), "b t k d -> (b t) k d")
        return (
            rearrange(slots, "(b t) k d -> b t k d", b=b),
            rearrange(attn, "(b t) k n -> b t k n", b=b),
        )

    def _sliding(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """T > max_frames: the first W frames in one window, then frame t (t >= W) as the last frame of the
        window [t-W+1, t]; every such window runs in one batch. x [B, T, N, D] -> slots, attn."""
        b, w = x.shape[0], self.max_frames
        head_slots, head_attn = self._window(x[:, :w])
        windows = x.unfold(1, w, 1)[:, 1:]  # [B, T-W, N, D, W]: windows ending at W..T-1
        windows = rearrange(windows, "b s n d w -> (b s) w n d")
        tail_slots, tail_attn = self._window(windows)
        tail_slots = rearrange(tail_slots[:, -1], "(b s) k d -> b s k d", b=b)
        tail_attn = rearrange(tail_attn[:, -1], "(b s) k n -> b s k n", b=b)
        return torch.cat([head_slots, tail_slots], dim=1), torch.cat([head_attn, tail_attn], dim=1)

    def _savi(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """SAVi-style ablation: frame t's slot attention starts from frame t-1's slots."""
        slots_t, attns, init = [], [], None
        for i in range(x.shape[1]):
            init, a = self.slot_attn(x[:, i], init)
            slots_t.append(init)
            attns.append(a)
        return torch.stack(slots_t, dim=1), torch.stack(attns, dim=1)

    def mix(self, slots: Tensor) -> Tensor:
        """Causal temporal layer, slot-wise (Eq. 3): [B, T, K, D] -> [B, T, K, D], T <= max_frames. Slot k at
        time t attends to slot k at times <= t; the time embedding enters the layer's input only, so it is
        not accumulated in the slots over the rounds."""
        b, t = slots.shape[:2]
        if t > self.max_frames:
            raise ValueError(f"factorizer got {t} frames, more than max_frames={self.max_frames}")
        when = self.time_embed[:t, None]  # [T, 1, D]
        h = rearrange(slots + when, "b t k d -> (b k) t d")
        h = rearrange(self.temporal_layer(h, causal=True), "(b k) t d -> b t k d", b=b)
        return h - when
