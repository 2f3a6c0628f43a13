"""Vector quantiser for Genie's latent actions (van den Oord et al. 2017), with dead-code restarts.

Shapes: [..., E] continuous encodings in, the nearest of C codebook vectors out.

- Nearest code by squared Euclidean distance in fp64 with autocast disabled (the trainer's bf16 autocast
  would otherwise run ``flat @ book.T`` in bf16 and flip argmins wherever codes are close; fp64 also makes
  the choice independent of how the batch is split over ranks, whose matmul kernels round differently).
- Straight-through estimator: the forward value is the code, the gradient flows to the encoder unchanged.
- Loss = ||sg[z_e] - e||^2 (moves codes to encodings) + commitment * ||z_e - sg[e]||^2 (keeps encodings
  near their codes), means over elements.
- Dead codes: a latent-action codebook collapses to a handful of codes unless unused ones are revived.
  Every ``restart_every`` training steps, codes chosen fewer than ``dead_threshold`` times since the last
  restart are replaced by encodings drawn from the current batch, distinct rows without replacement, and
  when there are more dead codes than encodings the surplus get a small seeded jitter: the codebook never
  holds two equal codes, whose exact tie would leave the argmin to the matmul kernel's rounding (this made
  2 ranks and 1 process pick different codes and diverge). Step 0 is such a restart, which initialises the
  whole codebook from data. Under torchrun the usage counts are all-reduced every step
  and the replacement encodings are drawn from the all-gathered *global* batch (rank order = global batch
  order, see ``train.lam.GlobalBatches``) with a generator seeded by the restart count, so every rank
  makes the same change, and the same as a single process with the whole batch. The counters are
  buffers: they are checkpointed and a resumed run restarts the same codes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


class VectorQuantizer(nn.Module):
    """z_e [..., E] -> (z_q [..., E] straight-through, indices int64 [...], loss scalar fp32)."""

    def __init__(
        self,
        num_codes: int,
        dim: int,
        commitment: float = 0.25,
        restart_every: int = 100,
        dead_threshold: float = 1.0,
    ) -> None:
        super().__init__()
        if num_codes < 1 or dim < 1:
            raise ValueError(f"VectorQuantizer needs num_codes >= 1 and dim >= 1, got {num_codes}, {dim}")
        if restart_every < 1:
            raise ValueError(f"restart_every must be >= 1, got {restart_every}")
        self.commitment, self.restart_every, self.dead_threshold = commitment, restart_every, dead_threshold
        self.codebook = nn.Parameter(torch.randn(num_codes, dim) * dim**-0.5)
        self.register_buffer("usage", torch.zeros(num_codes))  # assignments since the last restart
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # training forwards seen
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))

    @property
    def num_codes(self) -> int:
        return self.codebook.shape[0]

    def forward(self, z_e: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        flat = z_e.float().reshape(-1, z_e.shape[-1])  # [M, E]
        if self.training:
            if int(self.steps) % self.restart_every == 0:
                self._restart_dead_codes(flat.detach())
            self.steps += 1
        indices = self.nearest(flat)
        with torch.autocast(device_type=flat.device.type, enabled=False):  # fp32 loss under bf16 autocast
            codes = self.codebook.float()[indices]  # [M, E]
            loss = F.mse_loss(codes, flat.detach()) + self.commitment * F.mse_loss(flat, codes.detach())
        if self.training:
            counts = torch.bincount(indices, minlength=self.num_codes).float()
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(counts)
            self.usage += counts
        z_q = flat + (codes - flat).detach()  # straight-through
        return z_q.reshape(z_e.shape).to(z_e.dtype), indices.reshape(z_e.shape[:-1]), loss

    @torch.no_grad()
    def nearest(self, flat: Tensor) -> Tensor:
        """[M, E] -> index of the nearest code, int64 [M] (fp64 distances, autocast off)."""
        with torch.autocast(device_type=flat.device.type, enabled=False):
            book, flat = self.codebook.double(), flat.double()
            dist2 = flat.square().sum(-1, keepdim=True) - 2 * flat @ book.T + book.square().sum(-1)
            return dist2.argmin(dim=-1)

    def lookup(self, indices: Tensor) -> Tensor:
        """int64 [...] -> codes [..., E]."""
        return self.codebook[indices]

    def perplexity(self, indices: Tensor) -> Tensor:
        """exp(entropy) of the code histogram of ``indices`` (1 = collapsed, num_codes = uniform)."""
        p = torch.bincount(indices.flatten(), minlength=self.num_codes).float()
        p = p / p.sum().clamp(min=1)
        return torch.exp(-(p * p.clamp(min=1e-12).log()).sum())

    @torch.no_grad()
    def _restart_dead_codes(self, flat: Tensor) -> None:
        dead = (self.usage < self.dead_threshold).nonzero().flatten()
        if len(dead):
            # The global batch's encodings, in rank order; equal rows (e.g. from identical frame pairs) once.
            pool = torch.unique(_gather_rows(flat), dim=0)
            gen = torch.Generator().manual_seed(int(self.restarts))
            # Distinct rows: every encoding once (in a seeded order) before any is used again.
            rounds = -(-len(dead) // len(pool))
            pick = torch.cat([torch.randperm(len(pool), generator=gen) for _ in range(rounds)])[: len(dead)]
            new = pool[pick.to(pool.device)]
            # Reused encodings (more dead codes than encodings) get a jitter of 1% of the encodings' scale.
            repeat = (torch.arange(len(dead)) >= len(pool)).to(pool.device)
            scale = 0.01 * pool.std().clamp(min=1e-6)
            jitter = torch.randn(new.shape, generator=gen).to(pool.device) * scale
            self.codebook[dead] = torch.where(repeat[:, None], new + jitter, new).to(self.codebook.dtype)
        self.usage.zero_()
        self.restarts += 1


def _gather_rows(x: Tensor) -> Tensor:
    """Concatenate every rank's [M, E] rows in rank order (each rank holds the same M)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)
