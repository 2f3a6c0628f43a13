"""FLAM's inverse and forward dynamics models (paper section 4.2, Eqs. 4-5), shared over slots.

Shapes: B batch (here usually B*(T-1) folded transitions), K slots, D width, A = action_dim per slot.

Both models are the same Genie spatio-temporal stack (``SpatioTemporalBlock``) over a two-frame column per
slot, ``x = stack([current slots, second token])`` of shape [B, 2, K, D], plus a learned frame embedding
(which of the two rows a token is in). They differ, as the paper says, only in the temporal attention's
queries and keys, i.e. in what the second row holds:

- IDM: row 2 = the slot's *next* value s_{t+1}^k. Its temporal attention queries with s_{t+1}^k and reads
  keys/values {s_t^k (after spatial attention over all current slots), s_{t+1}^k}: it compares the next
  value with the current one to encode the change. Projections of the row-2 output give the per-slot
  Gaussian posterior q(z_t^k | s_t^{1:K}, s_{t+1}^k) = N(mu, exp(logvar)).
- FDM: row 2 = an *action token* s_t^k + W z_t^k (current value moved by the embedded latent action). Its
  temporal attention queries with that action token and reads {s_t^k (after spatial attention), action
  token}; the row-2 output is the predicted next slot ŝ_{t+1}^k = f(s_t^{1:K}, z_t^k). Starting row 2
  from s_t^k makes "nothing changes" the easy default, so z only has to carry the change.

The spatial attention runs over the current slots only (``spatial_frames=1``): slots interact (the paper's
"a person in a car moves because of the car"), but slot k's next value / action never reaches another
slot: z^k sees s_{t+1}^k alone, ŝ^k sees z^k alone. No slot-index embeddings anywhere, so both models are
permutation-equivariant over K and can be batched as one [B, 2, K, D] tensor.

Global-Coupled FLAM (``coupling="global"``, ablation of section 5.4 / appendix C.4: "the IDM infers
actions from all slots and the FDM predicts ŝ^k conditioned on s_t and all z_t"): the same models with
spatial attention on row 2 as well (``spatial_frames=None``, the plain Genie block). Then z^k depends on
every next slot and ŝ^k on every latent action ("the FDM can attend to z^j when predicting ŝ^k"), while
the K latents of size A keep the overall capacity unchanged (the paper: "it retains the same overall
capacity").
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.blocks import SpatioTemporalBlock

COUPLINGS = ("factored", "global")

# Posterior log-variance range: keeps exp(logvar) finite under bf16 autocast. Wide enough that a trained
# posterior never sits at the bounds (std in [1.2e-3, 54]).
LOGVAR_MIN, LOGVAR_MAX = -13.5, 8.0


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the last axis: [..., A] x2 -> [...], fp32."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(dim=-1)


def reparameterize(mu: Tensor, logvar: Tensor, sample: bool, noise: Tensor | None = None) -> Tensor:
    """z = mu + exp(logvar / 2) * eps (sample=True, training) or z = mu (posterior mean, evaluation).

    ``noise``: eps of mu's shape, drawn by the caller (the trainer draws it per global batch so that any
    number of ranks computes the same step); standard normal from the global RNG when None.
    """
    if not sample:
        return mu
    eps = torch.randn_like(mu) if noise is None else noise.to(mu.dtype)
    return mu + eps * (0.5 * logvar).exp()


class _SlotPairStack(nn.Module):
    """Shared body: [B, K, D] current slots + [B, K, D] second row -> [B, K, D] row-2 output."""

    def __init__(self, dim: int, num_heads: int, depth: int, coupling: str, dropout: float) -> None:
        super().__init__()
        if coupling not in COUPLINGS:
            raise ValueError(f"coupling {coupling!r} unknown; choose one of {COUPLINGS}")
        if depth < 1:
            raise ValueError(f"dynamics depth must be >= 1, got {depth}")
        # factored: only the current slots mix spatially; global: every token mixes with every slot.
        self.spatial_frames: int | None = 1 if coupling == "factored" else None
        self.frame_embed = nn.Parameter(torch.zeros(2, 1, dim))  # row identity: current vs second
        nn.init.trunc_normal_(self.frame_embed, std=0.02)
        self.blocks = nn.ModuleList(
            SpatioTemporalBlock(dim, num_heads, dropout=dropout) for _ in range(depth)
        )

    def forward(self, current: Tensor, second: Tensor) -> Tensor:
        x = torch.stack([current, second], dim=1) + self.frame_embed  # [B, 2, K, D]
        for block in self.blocks:
            x = block(x, spatial_frames=self.spatial_frames)
        return x[:, 1]


class IDM(nn.Module):
    """Inverse dynamics: (current slots [B, K, D], next slots [B, K, D]) -> (mu, logvar) [B, K, A].

    ``pool=True`` (the monolithic baselines, whose K "slots" are the N patches of a frame): the row-2
    outputs are averaged over tokens first, giving one scene-level latent [B, 1, A] (Genie's LAM).
    ``gaussian=False``: a deterministic encoding (to be vector-quantised) and logvar None.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        depth: int,
        action_dim: int,
        coupling: str = "factored",
        dropout: float = 0.0,
        pool: bool = False,
        gaussian: bool = True,
    ) -> None:
        super().__init__()
        self.pool, self.gaussian = pool, gaussian
        self.body = _SlotPairStack(dim, num_heads, depth, coupling, dropout)
        self.norm = nn.LayerNorm(dim)
        self.to_posterior = nn.Linear(dim, (2 if gaussian else 1) * action_dim)

    def forward(self, current: Tensor, next_slots: Tensor) -> tuple[Tensor, Tensor | None]:
        h = self.body(current, next_slots)
        if self.pool:
            h = h.mean(dim=1, keepdim=True)  # [B, 1, D]
        out = self.to_posterior(self.norm(h))
        if not self.gaussian:
            return out, None
        mu, logvar = out.chunk(2, dim=-1)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)


class FDM(nn.Module):
    """Forward dynamics: (current slots [B, K, D], latent actions [B, K, A]) -> predicted next slots
    [B, K, D], in the factorizer's slot space (unnormalised residual stream).

    Actions [B, 1, A] broadcast over K (one scene-level action for every token). ``action_dim=0``
    (SlotFormer): no actions, the next slots are predicted from the current ones alone.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        depth: int,
        action_dim: int,
        coupling: str = "factored",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.action_embed = nn.Linear(action_dim, dim) if action_dim else None
        self.body = _SlotPairStack(dim, num_heads, depth, coupling, dropout)

    def forward(self, current: Tensor, actions: Tensor) -> Tensor:
        if self.action_embed is None:
            return self.body(current, current)
        return self.body(current, current + self.action_embed(actions))
