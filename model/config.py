"""The one config of every world model in ``model/zoo.py`` (FLAM, its ablations and the baselines), beside
the interface they share (``model/base.py``).

One flat, frozen dataclass, because the models are configurations of the same blocks: the shared sizes
(width, depth, heads, slots, tokens) mean the same thing in every model, and the few fields of one model
family say so in their comment. A checkpoint stores it as a flat dict (a run's ``lam:`` section), and
``train/common.py:load_world_model`` rebuilds the model from that dict.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.dynamics import COUPLINGS
from model.latents import FAMILIES


@dataclass(frozen=True)
class LAMConfig:
    """World-model hyperparameters (paper Table 5 defaults for the simulators: MultiGrid K=4, N=256;
    Procgen K=16, N=196; nuPlan depth=3, K=16, N=196, feature_dim=7). Saved in every checkpoint (as the
    flat dict of these fields, the ``lam:`` section of a run's config)."""

    dim: int = 256  # attention width D
    num_heads: int = 8
    depth: int = 2  # layers in each of IDM, FDM and aggregator
    num_slots: int = 4  # K factors
    slot_iters: int = 3  # slot-attention iterations per frame
    action_dim: int = 0  # A per slot; 0 -> dim // num_slots (capacity matched to one latent of size dim)
    beta: float = 2e-4  # KL coefficient (latent "kl")
    # Latent-action family (model/latents.py): "kl" | "sparse" | "vq"; "" = the model's own (FLAM, AdaWorld,
    # PlaySlot: kl; Genie: vq). Capacity knob per family: beta (kl), l1 (sparse), vq_codes (vq).
    latent: str = ""
    l1: float = 0.05  # sparse: lambda_l1, the L1 weight of the energy E(z)
    l2: float = 1.0  # sparse: lambda_l2, the weight of the norm hinge max(sqrt(A) - ||z||^2, 0)
    vcm_variance: float = 0.1  # sparse: lambda_V
    vcm_covariance: float = 0.001  # sparse: lambda_C
    vcm_mean: float = 0.1  # sparse: lambda_M (on |mean|; the paper prints a signed mean, see latents.py)
    factorizer_temporal: bool = True  # False: ablation without the factorizer's temporal attention (SAVi)
    coupling: str = "factored"  # "factored" (FLAM) | "global" (Global-Coupled FLAM ablation)
    # F = len(FSQ levels) of the tokenizer and N = h * w tokens per frame: 0 = read from the token cache
    # (train/lam.py fills them in before building the model and saves the numbers with it); a value set
    # here is checked against the cache instead.
    feature_dim: int = 0
    num_tokens: int = 0
    # Frames in the factorizer's temporal window (time-embedding rows). Training windows must have exactly
    # this length (train/config.py checks lam_train.window), so every row is trained; longer sequences slide.
    max_frames: int = 16
    dropout: float = 0.0
    # -- one model family each (model/zoo.py); the other models do not read them --
    # vq: codebook size (Genie: presets size it to the joint action count, appendix C.1; FLAM: one per slot,
    # shared by the slots)
    vq_codes: int = 8
    vq_commitment: float = 0.25  # Genie: commitment loss weight
    vq_restart_every: int = 100  # Genie: revive codes unused over this many steps
    num_actions: int = 0  # World Model: ground-truth actions per actor (7 MultiGrid, 15 Procgen)
    num_actors: int = 1  # World Model: actors with an action each step (MultiGrid agents; 1 for Procgen)
    action_code: str = "joint"  # World Model: "joint" (one index over all actors, the paper) | "additive"
    slot_pretrain_steps: int = 5000  # PlaySlot / SlotFormer: steps of the object-centric stage first

    def __post_init__(self) -> None:
        for name in ("dim", "num_heads", "depth", "num_slots", "slot_iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"LAMConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("feature_dim", "num_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"LAMConfig.{name} must be >= 0 (0: from the token cache), got {getattr(self, name)}"
                )
        if self.dim % self.num_heads:
            raise ValueError(f"LAMConfig.dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.action_dim < 0:
            raise ValueError(
                f"LAMConfig.action_dim must be >= 0 (0 = dim // num_slots), got {self.action_dim}"
            )
        if self.action_dim == 0 and self.dim % self.num_slots:
            raise ValueError(
                f"LAMConfig.action_dim=0 means dim // num_slots, but dim {self.dim} is not divisible by "
                f"num_slots {self.num_slots}; set action_dim explicitly"
            )
        if self.coupling not in COUPLINGS:
            raise ValueError(f"LAMConfig.coupling {self.coupling!r} unknown; choose one of {COUPLINGS}")
        if self.latent not in ("", *FAMILIES):
            raise ValueError(f"LAMConfig.latent must be one of {FAMILIES} or empty, got {self.latent!r}")
        for name in ("beta", "l1", "l2", "vcm_variance", "vcm_covariance", "vcm_mean"):
            if getattr(self, name) < 0:
                raise ValueError(f"LAMConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_frames < 2:
            raise ValueError(f"LAMConfig.max_frames must be >= 2, got {self.max_frames}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LAMConfig.dropout must be in [0, 1), got {self.dropout}")
        for name in ("vq_codes", "vq_restart_every", "num_actors"):
            if getattr(self, name) < 1:
                raise ValueError(f"LAMConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.action_code not in ("joint", "additive"):
            raise ValueError(f"LAMConfig.action_code must be 'joint' or 'additive', got {self.action_code!r}")
        if self.num_actions < 0 or self.slot_pretrain_steps < 0:
            raise ValueError("LAMConfig.num_actions and slot_pretrain_steps must be >= 0")

    @property
    def latent_action_dim(self) -> int:
        """A: the size of each slot's latent action."""
        return self.action_dim or self.dim // self.num_slots
