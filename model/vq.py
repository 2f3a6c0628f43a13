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
  when there are more dead codes than distinct encodings the surplus get a small seeded jitter: the codebook
  never holds two equal codes, whose exact tie would leave the argmin to the matmul kernel's rounding (this
  made 2 ranks and 1 process pick different codes and diverge). Step 0 is such a restart, which initialises
  the whole codebook from data. Under torchrun the usage counts are all-reduced every step and the
  replacement encodings are drawn from the all-gathered *global* batch (rank order = global batch order, see
  ``train.lam.GlobalBatches``), in an order hashed from (restart count, row index), rows equal up to rounding
  counted once, so every rank makes the same change, the same as a single process with the whole batch, and
  the same compiled as eager. The counters are buffers: they are
  checkpointed and a resumed run restarts the same codes.
- torch.compile: no graph breaks. Every shape is static (counts by scatter-add over the C codes, not a
  bincount whose length depends on the data; duplicates found by sorting a fp64 projection of the rows, not
  ``unique``; dead codes selected by masks, not ``nonzero``; the draw order by an integer hash, not a CPU
  generator). Whether a step restarts is a Python bool the trainer sets before the forward
  (``begin_step``), so a compiled model holds two graphs, with and without the restart, and never reads a
  tensor into Python; without ``begin_step`` (eager use, tests) the module counts its own steps.
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
        # A fixed direction to project rows on when looking for duplicates (a function of dim alone).
        probe = torch.randn(dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        self.register_buffer("probe", probe, persistent=False)
        self.restart_due: bool | None = None  # set by begin_step; None: count steps ourselves

    @property
    def num_codes(self) -> int:
        return self.codebook.shape[0]

    def begin_step(self, step: int) -> None:
        """Called by the trainer before the training forward of global step ``step`` (outside
        torch.compile): decides whether that forward restarts dead codes, as a Python bool."""
        self.restart_due = step % self.restart_every == 0

    def forward(self, z_e: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        flat = z_e.float().reshape(-1, z_e.shape[-1])  # [M, E]
        if self.training:
            due = self.restart_due
            if due is None:  # no trainer step given: count our own (reads a tensor: eager use only)
                due = int(self.steps) % self.restart_every == 0
            if due:
                self._restart_dead_codes(flat.detach())
            self.steps += 1
        indices = self.nearest(flat)
        with torch.autocast(device_type=flat.device.type, enabled=False):  # fp32 loss under bf16 autocast
            codes = self.codebook.float()[indices]  # [M, E]
            loss = F.mse_loss(codes, flat.detach()) + self.commitment * F.mse_loss(flat, codes.detach())
        if self.training:
            counts = self.counts(indices)
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

    @torch.no_grad()
    def counts(self, indices: Tensor) -> Tensor:
        """How often each code occurs in ``indices`` (int64 [...] in [0, C)): fp32 [C], a static shape."""
        flat = indices.reshape(-1)
        ones = torch.ones(flat.shape, dtype=torch.float32, device=flat.device)
        return torch.zeros(self.num_codes, device=flat.device).scatter_add_(0, flat, ones)

    def perplexity(self, indices: Tensor) -> Tensor:
        """exp(entropy) of the code histogram of ``indices`` (1 = collapsed, num_codes = uniform)."""
        p = self.counts(indices)
        p = p / p.sum().clamp(min=1)
        return torch.exp(-(p * p.clamp(min=1e-12).log()).sum())

    @torch.no_grad()
    def _restart_dead_codes(self, flat: Tensor) -> None:
        """Replace the codes used fewer than ``dead_threshold`` times by rows of the global batch (see the
        module docstring); static shapes throughout, so it compiles into the training graph."""
        rows = _gather_rows(flat)  # [R, E], the global batch in rank order
        order, distinct = self._draw_order(rows)
        dead = self.usage < self.dead_threshold  # [C]
        rank = dead.long().cumsum(0) - 1  # the i-th dead code takes the i-th drawn row ...
        new = rows[order[rank.clamp(min=0) % distinct]]  # [C, E]
        repeat = rank >= distinct  # ... cycling when there are more dead codes than distinct rows
        scale = 0.01 * rows.std().clamp(min=1e-6)  # reused rows get a jitter of 1% of the encodings' scale
        cells = torch.arange(new.numel(), device=rows.device).reshape(new.shape)
        jitter = (2 * _hash_uniform(cells, self.restarts, salt=1) - 1).to(new.dtype) * scale
        new = torch.where(repeat[:, None], new + jitter, new)
        self.codebook.copy_(torch.where(dead[:, None], new.to(self.codebook.dtype), self.codebook))
        self.usage.zero_()
        self.restarts += 1

    def _draw_order(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """rows [R, E] -> (order int64 [R]: one row of every group of equal rows, in a seeded random order,
        then the others; the number of groups, int64 0-d).

        Rows are grouped by their fp64 projection on a fixed random direction: rows equal up to rounding
        (projections within 1e-5 of the rows' scale) form one group, whose representative is its lowest row
        index. Rounding-close rows would make rounding-close codes, whose argmin is as fragile as an exact
        tie; and a compiled graph, or another split of the batch over ranks, rounds the same encodings a
        little differently (1e-7 relative), which must not change which rows are drawn. Distinct encodings
        (other frames) lie far further apart along a random direction, but for a measure-zero coincidence."""
        r = rows.shape[0]
        key = rows.double() @ self.probe.double()  # [R]
        tol = 1e-5 * rows.detach().abs().amax().double() * rows.shape[1] ** 0.5
        sorted_key, by_key = torch.sort(key, stable=True)
        starts = torch.cat([sorted_key.new_ones(1, dtype=torch.bool), sorted_key.diff() > tol])
        group = torch.empty_like(by_key).scatter(0, by_key, starts.long().cumsum(0) - 1)  # [R] per row
        index = torch.arange(r, device=rows.device)
        lowest = torch.full_like(index, r).scatter_reduce(0, group, index, reduce="amin")  # [R] per group
        is_first = index == lowest[group]
        score = _hash_uniform(index, self.restarts, salt=0)
        order = torch.argsort(torch.where(is_first, score, score + 2), stable=True)
        return order, is_first.sum()


def _hash_uniform(index: Tensor, seed: Tensor, salt: int) -> Tensor:
    """Counter-based random numbers: fp64 in [0, 1) for every int64 ``index`` (>= 0, < 2**31) under the
    int64 0-d ``seed``: the same on every device and rank, inside compiled graphs, no generator state.
    Three rounds of a 32-bit integer mix (xor-shift, multiply); int64 arithmetic, so nothing overflows."""
    mask = 0xFFFFFFFF
    x = (index * 0x9E3779B1 + seed.to(index.device) * 0x85EBCA6B + salt * 0xC2B2AE35) & mask
    for _ in range(3):
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & mask
    x = x ^ (x >> 16)
    return x.double() / 2.0**32


def _gather_rows(x: Tensor) -> Tensor:
    """Concatenate every rank's [M, E] rows in rank order (each rank holds the same M)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    out = x.new_empty((dist.get_world_size() * x.shape[0], *x.shape[1:]))
    dist.all_gather_into_tensor(out, x.contiguous())
    return out
