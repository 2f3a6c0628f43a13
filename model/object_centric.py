"""Object-centric baselines (paper section 5): slots learned first, frozen, then dynamics on them.

Shapes: B batch, T time, K slots, N tokens per frame, F FSQ width, D width, A per-slot action size.

Both run in two stages inside one ``train/lam.py`` run (the trainer is the same; the model counts its own
training steps in a checkpointed buffer):

1. Object-centric stage, the first ``lam.slot_pretrain_steps`` steps: a SAVi factorizer (slot attention
   per frame, initialised from the previous frame's slots, no temporal attention) is trained as a slot
   autoencoder. A slot decoder (the ``Aggregator`` block with learned position queries, no frame input)
   must rebuild every frame's features from its K slots alone: loss = MSE(decoded, features).
2. Dynamics stage: the token embedding and the factorizer are frozen (run without gradients; the
   optimiser skips parameters without gradients, so nothing drifts), and FLAM's IDM / FDM / aggregator
   are trained on the frozen slots with FLAM's loss.

- ``PlaySlot`` (Villar-Corrales and Behnke 2025): per-slot latent actions from the shared IDM, Gaussian
  with KL as FLAM's (the capacity is FLAM's: K latents of A = D / K each).
- ``SlotFormer`` (Wu et al. 2022): no latent actions (A = 0, no IDM): the FDM predicts the next slots
  from the current ones alone.

The difference to FLAM is therefore exactly what the paper isolates: separate stages (representation
not shaped by the dynamics) and the SAVi factorizer, with every block shared.
"""

from __future__ import annotations

import dataclasses

import torch
from einops import rearrange
from torch import Tensor, nn

from model.config import LAMConfig
from model.flam import FLAM, Aggregator


class PlaySlot(FLAM):
    """Two-stage object-centric latent action model (see the module docstring)."""

    latent = "kl"
    has_unused_parameters = True  # each stage leaves the other stage's parameters without gradients
    staged = True

    def __init__(self, cfg: LAMConfig) -> None:
        super().__init__(dataclasses.replace(cfg, factorizer_temporal=False))  # SAVi slots
        self.slot_decoder = Aggregator(cfg.dim, cfg.num_heads, cfg.depth, cfg.dropout)
        # Its own output layers: FLAM's head predicts a change from the current frame (zero-initialised),
        # the slot decoder whole frames.
        self.recon_out = nn.Sequential(nn.LayerNorm(cfg.dim), nn.Linear(cfg.dim, cfg.feature_dim))
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))
        self.stage_pretraining: bool | None = None  # set by begin_step; None: read train_steps

    def begin_step(self, step: int) -> None:
        """The stage of global step ``step`` as a Python bool: a compiled model holds one graph per stage
        (one recompile at the switch) and never reads ``train_steps`` into Python."""
        super().begin_step(step)
        self.stage_pretraining = step < self.cfg.slot_pretrain_steps

    @property
    def pretraining(self) -> bool:
        """True while training is in the object-centric stage."""
        if not self.training:
            return False
        if self.stage_pretraining is not None:
            return self.stage_pretraining
        return int(self.train_steps) < self.cfg.slot_pretrain_steps

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        if not self.training:
            return super().forward(batch)
        pretraining = self.pretraining
        self.train_steps += 1
        if not pretraining:
            return super().forward(batch)
        features = batch["features"]
        self._check_features(features, min_frames=1)
        recon = self.reconstruct(features)
        loss = (recon.float() - features.float()).square().mean()
        return loss, {"loss": loss.detach(), "slot_recon_mse": loss.detach()}

    def reconstruct(self, features: Tensor) -> Tensor:
        """The slot autoencoder: features [B, T, N, F] -> features rebuilt from the K slots alone."""
        b, t = features.shape[:2]
        slots, _ = self.factorizer(self._embed(features))
        queries = self.pos_embed.expand(b * t, -1, -1)  # [B T, N, D]: where, never what
        decoded = self.slot_decoder(queries, rearrange(slots, "b t k d -> (b t) k d"))
        return rearrange(self.recon_out(decoded), "(b t) n f -> b t n f", b=b)

    def _encode(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.training and not self.pretraining:
            with torch.no_grad():  # stage 2: the object-centric representation is frozen
                x, slots, attn = super()._encode(features)
            return x.detach(), slots.detach(), attn.detach()
        return super()._encode(features)


class SlotFormer(PlaySlot):
    """Two-stage slot dynamics without latent actions (see the module docstring)."""

    latent = "none"
    factored = False
