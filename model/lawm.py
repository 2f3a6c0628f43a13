"""LAWM-style latent action world model (paper 004, from its abstract): one world model trained on labelled
and unlabelled transitions through a latent action space both share.

Shapes: B batch, T time, N tokens, F FSQ width, K entities (FLAM slots; K = 1 for the monolithic AdaWorld),
D width, A latent size per entity.

A wrapper around a trained-from-scratch latent action model (FLAM or AdaWorld: a Gaussian IDM) and an
``ActionEncoder``. Per transition t:

    mu_t, logvar_t = IDM(state_t, state_{t+1})              every transition (the alignment target)
    z_t = sample(mu_t, logvar_t)                            unlabelled transitions
    z_t = encoder(a_t, sg(state_t))   with prob. p          labelled transitions ("either source":
          sample(mu_t, logvar_t)      otherwise              p = ``encoder_prob``)
    next = FDM(state_t, z_t) -> aggregator/head -> predicted features_{t+1}

    loss = pred_mse + beta * KL(q(z) || N(0, I)) + align_weight * alignment_loss(encoder, sg(mu)) on labelled

The world model trains on every step; the encoder is trained by the alignment loss and, through the FDM,
by the prediction loss where its latent is used. Its input state is detached: the encoder reads the state,
it does not reshape it. Actions of unlabelled steps are never read (tested).

``states(features)`` is the state the policies see ([B, T, K, D]: FLAM's slots; AdaWorld's token
embeddings averaged over the frame) and ``latents(features)`` the IDM's posterior means [B, T-1, K, A].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from model.action_encoder import ActionEncoder, ActionEncoderConfig, alignment_loss
from model.base import TokenWorldModel
from model.dynamics import gaussian_kl, reparameterize
from model.flam import FLAM
from model.scene import AdaWorld


@dataclass(frozen=True)
class LAWMLossConfig:
    align_weight: float = 1.0
    encoder_prob: float = 0.5  # share of labelled transitions whose FDM input is the encoder's latent

    def __post_init__(self) -> None:
        if self.align_weight < 0 or not 0.0 <= self.encoder_prob <= 1.0:
            raise ValueError(f"lawm: align_weight must be >= 0 and encoder_prob in [0, 1], got {self}")


class LatentActionWorldModel(nn.Module):
    """``forward(batch) -> (loss, metrics)`` with batch["features"] float [B, T, N, F], batch["actions"]
    int [B, T] (read only where labelled), batch["labelled"] bool [B, T] (step t's action is known), and
    optional batch["encoder_draw"] uniform [B, T-1] (which labelled steps use the encoder; else drawn here),
    batch["noise"] [B, T-1, K, A], batch["kl_weight"]."""

    def __init__(
        self,
        world_model: TokenWorldModel,
        num_actions: int,
        encoder: ActionEncoderConfig | None = None,
        loss: LAWMLossConfig | None = None,
    ) -> None:
        super().__init__()
        if type(world_model) not in (FLAM, AdaWorld) or not world_model.action_dim:
            raise ValueError(
                f"LAWM needs a world model with a Gaussian IDM (flam or adaworld), got "
                f"{type(world_model).__name__}: Genie's discrete codes and models without latent actions "
                "have no continuous latent space to align actions with"
            )
        self.world_model, self.loss_cfg = world_model, loss or LAWMLossConfig()
        self.factored = isinstance(world_model, FLAM)
        cfg = world_model.cfg
        self.num_entities = cfg.num_slots if self.factored else 1
        self.latent_dim = world_model.action_dim
        self.encoder = ActionEncoder(num_actions, cfg.dim, self.latent_dim, encoder or ActionEncoderConfig())

    # -- the two model families ----------------------------------------------------------------------

    def _parts(self, features: Tensor) -> dict[str, Tensor]:
        """states [B, T, K, D]; per transition, folded (B T-1): the FDM's input, mu, logvar [.., K, A]."""
        wm = self.world_model
        if self.factored:
            x, slots, _ = wm._encode(features)
            current = rearrange(slots[:, :-1], "b t k d -> (b t) k d")
            mu, logvar = wm._posterior(current, rearrange(slots[:, 1:], "b t k d -> (b t) k d"))
            return {"x": x, "states": slots, "current": current, "mu": mu, "logvar": logvar}
        x = wm._embed(features)
        current = rearrange(x[:, :-1], "b t n d -> (b t) n d")
        mu, logvar = wm.idm(current, rearrange(x[:, 1:], "b t n d -> (b t) n d"))
        return {"x": x, "states": x.mean(dim=2, keepdim=True), "current": current, "mu": mu, "logvar": logvar}

    def _predict(self, parts: dict[str, Tensor], features: Tensor, z: Tensor) -> Tensor:
        """Next-frame features [(B T-1), N, F] from the current state and latents z [(B T-1), K, A]."""
        wm, f_t = self.world_model, rearrange(features[:, :-1], "b t n f -> (b t) n f")
        if self.factored:
            x_t = rearrange(parts["x"][:, :-1], "b t n d -> (b t) n d")
            return wm._decode(x_t, f_t, wm.fdm(parts["current"], z))
        return wm._predict_features(f_t, wm.fdm(parts["current"], z))

    # -- training ------------------------------------------------------------------------------------

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        features = batch["features"]
        self.world_model._check_features(features, min_frames=2)
        b, t = features.shape[:2]
        labelled = batch["labelled"][:, :-1].reshape(-1).bool()  # [(B T-1)]: step t -> t+1 labelled
        parts = self._parts(features)
        mu, logvar = parts["mu"], parts["logvar"]
        noise = batch.get("noise")
        if noise is not None:
            noise = rearrange(noise, "b t k a -> (b t) k a")
        z = reparameterize(mu, logvar, sample=self.training, noise=noise)
        states = rearrange(parts["states"][:, :-1], "b t k d -> (b t) k d").detach()
        # Unlabelled steps' actions are replaced by 0 before the encoder sees them: never read.
        actions = torch.where(labelled, batch["actions"][:, :-1].reshape(-1), 0)
        encoded = self.encoder(actions, states)
        draw = batch.get("encoder_draw")
        draw = torch.rand(b, t - 1, device=features.device) if draw is None else draw
        use_encoder = labelled & (draw.reshape(-1) < self.loss_cfg.encoder_prob)
        z = torch.where(use_encoder[:, None, None], encoded.to(z.dtype), z)
        pred = rearrange(self._predict(parts, features, z), "(b t) n f -> b t n f", b=b)
        errors = self.world_model.prediction_errors(pred, features)
        kl = gaussian_kl(mu, logvar).mean(dim=0).sum()  # summed over entities, as FLAM's loss
        align = alignment_loss(encoded, mu, labelled)
        beta = self.world_model.cfg.beta * batch.get("kl_weight", 1.0)
        loss = errors["pred_mse"] + beta * kl + self.loss_cfg.align_weight * align
        metrics = {
            "loss": loss,
            **errors,
            "kl": kl,
            "align": align,
            "labelled_share": labelled.float().mean(),
            "encoder_share": use_encoder.float().mean(),
        }
        return loss, {k: v.detach() for k, v in metrics.items()}

    # -- what the policies use -----------------------------------------------------------------------

    def states(self, features: Tensor) -> Tensor:
        """features [B, T, N, F] -> states [B, T, K, D] (slot t sees frames <= t of the window only)."""
        self.world_model._check_features(features, min_frames=1)
        if self.factored:
            return self.world_model._encode(features)[1]
        return self.world_model._embed(features).mean(dim=2, keepdim=True)

    def latents(self, features: Tensor) -> Tensor:
        """IDM posterior means: features [B, T, N, F] -> [B, T-1, K, A]."""
        return self.world_model.infer_actions(features)
