"""The three latent-action families (papers 002/003, Garrido et al.: "information content reduction"), one
switch ``lam.latent`` for every latent-action model: how the IDM's output becomes the latent action that
drives the forward model, the regulariser that bounds its information, and how to draw latents without a
video (controllable generation).

Shapes: M latents of size A: [..., K', A] with K' = K slots (FLAM, PlaySlot) or 1 (a scene latent).

- ``kl`` (noise; the VAE form, FLAM's and AdaWorld's default): the IDM gives a Gaussian posterior
  (mu, logvar); z = mu + sigma * eps in training, mu in evaluation; loss = beta * KL(q || N(0, I)), the KL
  summed over the A dims and over the K' latents of a transition, averaged over transitions (the capacity-
  matched quantity: FLAM's K latents of A = D/K and a scene latent of D put the same D numbers under the
  same beta). Prior: N(0, I).
- ``sparse`` (paper 003 section 3): the IDM's output is z itself (deterministic), regularised by
  L(Z) = VCM(Z) + mean_i E(z_i) with E(z) = l2 * max(sqrt(A) - ||z||_2^2, 0) + l1 * ||z||_1 and
  VCM(Z) = v * mean_d max(1 - std_d, 0) + c * mean_{d != e} cov_de^2 + m * mean_d |mean_d|
  (``sparse_loss``). The paper prints the mean term signed; minimising a signed mean is unbounded below
  (every latent would drift to -inf along all dims, held back only by the L1 term), so we penalise its
  absolute value, which asks for what the term is for: latents centred at zero. Prior: ``SparsePrior``.
- ``vq`` (discretisation; Genie's default): the IDM's output is vector-quantised by a codebook of
  ``vq_codes`` entries (``model/vq.py``: straight-through, commitment loss, dead-code restarts); for FLAM
  the K slots share one codebook. Capacity = codebook size per latent. Prior: a uniformly drawn code.

**Batch statistics over slot latents (FLAM, PlaySlot).** VCM is a statistic of a set of latents. We pool
every slot latent of the batch, M = B * (T-1) * K samples, into one set: the slots share one IDM and one
latent action space (FLAM's premise: "a common latent action space across factors"), so the set describes
the distribution of one entity's actions. Per-slot statistics (std over the batch of slot k alone) would
demand std_d >= 1 from every slot index, so a slot that holds the static background, or nothing, would be
pushed to emit varying latents, i.e. to act (and the forward model would have to learn to ignore it).
Pooled, the variance the batch needs can come from the slots that do act, and a quiet slot may sit at a
constant latent; only its energy term E(z) (per latent, not a batch statistic) applies to it. Slot
permutation symmetry also argues for pooling: slot indices carry no identity, so per-index statistics would
constrain an arbitrary labelling. ``tests/model/test_latents.py`` checks that, pooled, the VCM gradient on a
constant slot vanishes once the other slots carry the variance, and that per-slot statistics would not.

Under torchrun the sparse statistics are taken over the *global* batch (a differentiable all-gather), so
W ranks compute the loss and gradients of one process with the whole batch.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

from model.dynamics import gaussian_kl, reparameterize
from model.vq import VectorQuantizer

FAMILIES = ("kl", "sparse", "vq")
# The model attribute (``model.latent``) of models whose latent actions are not one of FAMILIES.
NO_LATENT = ("actions", "none")
VCM_EPS = 1e-4  # inside the std's square root (as VICReg): a finite gradient at zero variance


def sparse_energy(z: Tensor, l1: float, l2: float) -> Tensor:
    """E(z) = l2 * max(sqrt(A) - ||z||_2^2, 0) + l1 * ||z||_1 per latent: [..., A] -> [...], fp32."""
    z = z.float()
    hinge = (math.sqrt(z.shape[-1]) - z.square().sum(-1)).clamp(min=0)
    return l2 * hinge + l1 * z.abs().sum(-1)


def vcm(z: Tensor, variance: float, covariance: float, mean: float) -> dict[str, Tensor]:
    """Variance-covariance-mean regulariser of a set of latents z [M, A] (M >= 2), fp32 ->
    {"vcm", "vcm_variance", "vcm_covariance", "vcm_mean"} (the three weighted terms and their sum).

    std_d = sqrt(unbiased var_d + 1e-4); covariance = mean over the A(A-1) off-diagonal entries of the
    squared (unbiased) covariance matrix; mean = mean_d |mean_d| (absolute: see the module docstring)."""
    z = z.float()
    m, a = z.shape
    mu = z.mean(0)
    centred = z - mu
    std = (centred.square().sum(0) / (m - 1) + VCM_EPS).sqrt()
    terms = {"vcm_variance": variance * (1.0 - std).clamp(min=0).mean()}
    if a > 1:
        cov = centred.T @ centred / (m - 1)  # [A, A]
        off = cov.square().sum() - cov.diagonal().square().sum()
        terms["vcm_covariance"] = covariance * off / (a * (a - 1))
    else:
        terms["vcm_covariance"] = z.new_zeros(())
    terms["vcm_mean"] = mean * mu.abs().mean()
    terms["vcm"] = terms["vcm_variance"] + terms["vcm_covariance"] + terms["vcm_mean"]
    return terms


def _global_rows(x: Tensor) -> Tensor:
    """Every rank's rows [M, A] in rank order, differentiable (identity in one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()))


def sparse_loss(z: Tensor, cfg) -> tuple[Tensor, dict[str, Tensor]]:
    """The paper's sparse regulariser of latents z [..., A] (all leading axes pooled into one set, see the
    module docstring) with ``cfg``'s weights (LAMConfig l1, l2, vcm_variance, vcm_covariance, vcm_mean) ->
    (L(Z) = VCM(Z) + mean_i E(z_i), metrics). VCM needs two latents; with one it is 0."""
    flat = z.reshape(-1, z.shape[-1]).float()
    energy = sparse_energy(flat, cfg.l1, cfg.l2)
    terms = {"energy": energy.mean()}
    rows = _global_rows(flat)
    if rows.shape[0] >= 2:
        terms.update(vcm(rows, cfg.vcm_variance, cfg.vcm_covariance, cfg.vcm_mean))
    else:
        terms["vcm"] = flat.new_zeros(())
    loss = terms["vcm"] + terms["energy"]
    return loss, terms


class GaussianLatent(nn.Module):
    """``kl``: Gaussian posterior, reparameterised, KL to N(0, I) (no parameters)."""

    family = "kl"
    gaussian = True  # the IDM outputs (mu, logvar)

    def __init__(self, action_dim: int, cfg) -> None:
        super().__init__()
        self.action_dim, self.beta = action_dim, cfg.beta

    def forward(
        self, mu: Tensor, logvar: Tensor, noise: Tensor | None, weight: Tensor | float
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """mu, logvar [M, K', A] -> (z [M, K', A], beta * weight * kl, metrics: kl, kl_per_slot [K'],
        post_std). z is sampled in training mode (``noise`` = eps, else drawn), mu in eval."""
        z = reparameterize(mu, logvar, sample=self.training, noise=noise)
        kl_per_slot = gaussian_kl(mu, logvar).mean(dim=0)  # [K']
        kl = kl_per_slot.sum()
        metrics = {"kl": kl, "kl_per_slot": kl_per_slot, "post_std": (0.5 * logvar.float()).exp().mean()}
        return z, self.beta * weight * kl, metrics

    def infer(self, mu: Tensor) -> Tensor:
        return mu

    def snap(self, z: Tensor) -> Tensor:
        """A latent from outside the IDM (a controller's) in the form the forward model was trained on."""
        return z

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        """Draws from the prior N(0, I): [..., A] on the CPU."""
        return torch.randn(shape, generator=generator)


class SparsePrior(nn.Module):
    """A documented sampler for sparse latents, which have no prior density of their own.

    The sparse regulariser defines an energy, not a distribution. Its L1 term is the negative log-density
    of a Laplace distribution, so we sample each dimension from Laplace(loc_d, b_d) with the location and
    the scale (mean absolute deviation, the Laplace's maximum-likelihood scale) of the latents the IDM
    produced in training: exponential moving averages (momentum ``momentum``) kept in buffers, all-reduced
    over ranks and saved in the checkpoint. Dimensions are drawn independently (VCM decorrelates them).
    Before any training step it is Laplace(0, 1)."""

    def __init__(self, action_dim: int, momentum: float = 0.01) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("loc", torch.zeros(action_dim))
        self.register_buffer("scale", torch.ones(action_dim))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, z: Tensor) -> None:
        """Fold a batch of training latents [..., A] into the running location and scale."""
        flat = z.detach().float().reshape(-1, z.shape[-1])
        stats = torch.cat([flat.sum(0), flat.new_tensor([flat.shape[0]])])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        mean = stats[:-1] / stats[-1]
        dev = (flat - mean).abs().sum(0)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(dev)
        mad = dev / stats[-1]
        rate = 1.0 if int(self.updates) == 0 else self.momentum
        self.loc.lerp_(mean, rate)
        self.scale.lerp_(mad.clamp(min=1e-6), rate)
        self.updates += 1

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        """[..., A] on the CPU: loc - scale * sign(u) * log(1 - 2|u|), u ~ U(-1/2, 1/2)."""
        u = torch.rand(shape, generator=generator) - 0.5
        loc, scale = self.loc.cpu(), self.scale.cpu()
        return loc - scale * u.sign() * torch.log1p(-2 * u.abs()).clamp(min=-30.0)


class SparseLatent(nn.Module):
    """``sparse``: the IDM output is z, regularised by ``sparse_loss``; prior ``SparsePrior``."""

    family = "sparse"
    gaussian = False

    def __init__(self, action_dim: int, cfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.prior = SparsePrior(action_dim)

    def forward(
        self, z: Tensor, logvar: None, noise: None, weight: Tensor | float
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """z [M, K', A] -> (z, weight * L(Z), metrics: sparse_loss, energy, vcm terms, l1_norm, sq_norm)."""
        loss, terms = sparse_loss(z, self.cfg)
        if self.training:
            self.prior.update(z)
        flat = z.detach().float().reshape(-1, z.shape[-1])
        metrics = {
            "sparse_loss": loss,
            **terms,
            "l1_norm": flat.abs().sum(-1).mean(),
            "sq_norm": flat.square().sum(-1).mean(),
        }
        return z, weight * loss, metrics

    def infer(self, z: Tensor) -> Tensor:
        return z

    def snap(self, z: Tensor) -> Tensor:
        return z

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        return self.prior.sample(shape, generator)


class VQLatent(VectorQuantizer):
    """``vq``: the IDM output quantised by a codebook (shared by the K slots of a factored model)."""

    family = "vq"
    gaussian = False

    def __init__(self, action_dim: int, cfg) -> None:
        super().__init__(
            cfg.vq_codes, action_dim, commitment=cfg.vq_commitment, restart_every=cfg.vq_restart_every
        )

    def forward(  # type: ignore[override]
        self, z_e: Tensor, logvar: None, noise: None, weight: Tensor | float
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """z_e [M, K', A] -> (codes straight-through, vq loss (not warmed up: it is how the codebook
        learns), metrics: vq_loss, perplexity, codes_used)."""
        z_q, indices, loss = super().forward(z_e)
        metrics = {
            "vq_loss": loss,
            "perplexity": self.perplexity(indices),
            "codes_used": (self.counts(indices) > 0).float().sum(),
        }
        return z_q, loss, metrics

    def indices(self, z_e: Tensor) -> Tensor:
        """[..., A] -> codebook index int64 [...]."""
        return self.nearest(z_e.reshape(-1, z_e.shape[-1])).reshape(z_e.shape[:-1])

    def infer(self, z_e: Tensor) -> Tensor:
        return self.lookup(self.indices(z_e))

    def snap(self, z: Tensor) -> Tensor:
        """The nearest code: the forward model only ever saw codes."""
        return self.infer(z)

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        """Uniformly drawn codes [..., A] on the CPU."""
        indices = torch.randint(self.num_codes, shape[:-1], generator=generator)
        return self.codebook.detach().cpu()[indices]


HEADS = {"kl": GaussianLatent, "sparse": SparseLatent, "vq": VQLatent}
# Attribute under which a model holds its head: Genie's codebook keeps its checkpoint key ``vq.*``.
HEAD_ATTRIBUTE = {"kl": "gaussian_latent", "sparse": "sparse", "vq": "vq"}


def resolve_family(configured: str, default: str) -> str:
    """``lam.latent`` ("" = the model's own ``default``) -> one of FAMILIES."""
    family = configured or default
    if family not in FAMILIES:
        raise ValueError(f"lam.latent must be one of {FAMILIES} (empty: the model's own), got {family!r}")
    return family
