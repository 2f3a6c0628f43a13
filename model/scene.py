"""Monolithic baselines (paper section 5): one scene-level action drives the whole frame.

Shapes: B batch, T time, N tokens per frame, F FSQ width, D width, A = K * (FLAM's per-slot size): the one
latent has the same number of numbers as FLAM's K latents together (the paper's capacity matching: "a
single latent action of dimension d" against "factor-wise latent actions of dimension d/K").

The state is the frame's N patch tokens (no factorizer). IDM and FDM are the same Genie spatio-temporal
stacks FLAM uses (``model/dynamics.py``), here over patches with every row attending spatially (the plain
Genie block, ``coupling="global"``):

    x_t = embed(features_t)                                                 [B, N, D]
    IDM: (x_t, x_{t+1}) -> row-2 outputs averaged over the N tokens -> one latent   [B, 1, A]
    FDM: rows (x_t, x_t + W a_t) -> row-2 outputs = x̂_{t+1}                  [B, N, D]
    pred = features_t + head(LN x̂_{t+1})

What differs between the three is only what ``a_t`` is:
- ``Genie``: the IDM encoding, vector-quantised (``model/vq.py``: codebook, commitment loss, dead-code
  restarts). Loss = prediction MSE + VQ loss.
- ``AdaWorld``: a Gaussian posterior with the reparameterisation trick. Loss = MSE + beta * KL (the KL of
  all A numbers, the same quantity FLAM's slot-summed KL is).
  Both are the scene-level latent-action model with their paper's default family; ``lam.latent`` switches
  either to any family of ``model/latents.py`` (``kl`` | ``sparse`` | ``vq``; then the two are the same
  model).
- ``WorldModel``: no IDM; the ground-truth actions of every actor at t as one monolithic action token (the
  paper: "we follow the standard practice of treating them as a single monolithic action token"). With
  ``action_code="joint"`` (default) the token is the one-hot of the *joint* action index
  sum_i a_i * num_actions^i over the ``num_actors`` actors, so the FDM's linear action embedding is one
  learned vector per joint action (7^4 = 2401 for four MultiGrid agents): the model faces the combinatorial
  action space the paper argues about, and a joint action unseen in training has an untrained embedding.
  ``action_code="additive"`` is the factored alternative: the concatenated per-actor one-hots, i.e. a sum of
  per-actor embeddings that generalises compositionally (not the paper's baseline; kept as a named option).
  Needs ``batch["actions"]`` (int [B, T] or [B, T, num_actors]); datasets without actions are refused.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from model.base import ActionFn, TokenWorldModel
from model.dynamics import FDM, IDM
from model.latents import FAMILIES

MAX_JOINT_ACTIONS = 65536  # World Model: joint action embeddings (7^4 = 2401 for four MultiGrid agents)


class SceneLAM(TokenWorldModel):
    """The shared body of Genie, AdaWorld and World Model (see the module docstring)."""

    factored = False

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        d, a = cfg.dim, self.action_dim
        if self.latent in FAMILIES:
            self._init_latent(a)
            gaussian = self.latent_head.gaussian
            self.idm = IDM(
                d, cfg.num_heads, cfg.depth, a, "global", cfg.dropout, pool=True, gaussian=gaussian
            )
        self.fdm = FDM(d, cfg.num_heads, cfg.depth, a, "global", cfg.dropout)

    @property
    def action_dim(self) -> int:
        """A: the size of the one scene-level action vector."""
        return self.cfg.num_slots * self.cfg.latent_action_dim

    # -- training ------------------------------------------------------------------------------------

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """batch["features"] [B, T, N, F] (+ "noise" [B, T-1, 1, A] for the kl family, "actions" for World
        Model, "kl_weight" a factor on the kl / sparse term) -> (loss, detached metrics: loss, pred_mse,
        copy_mse and the latent's own terms)."""
        features = batch["features"]
        self._check_features(features, min_frames=2)
        b = features.shape[0]
        x = self._embed(features)
        current = rearrange(x[:, :-1], "b t n d -> (b t) n d")
        actions, latent_loss, extra = self._transition_latents(x, current, batch)
        pred = self._predict_features(
            rearrange(features[:, :-1], "b t n f -> (b t) n f"), self.fdm(current, actions)
        )
        errors = self.prediction_errors(rearrange(pred, "(b t) n f -> b t n f", b=b), features)
        loss = errors["pred_mse"] + latent_loss
        metrics = {"loss": loss, **errors, **extra}
        return loss, {k: v.detach() for k, v in metrics.items()}

    def _transition_latents(
        self, x: Tensor, current: Tensor, batch: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """-> (actions [(B T-1), 1, A], the latent's loss term, its metrics): the IDM's output through
        the family's head (``model/latents.py``)."""
        raw, logvar = self.idm(current, rearrange(x[:, 1:], "b t n d -> (b t) n d"))  # [(B T-1), 1, A]
        noise = batch.get("noise")
        if noise is not None:
            noise = rearrange(noise, "b t k a -> (b t) k a")
        return self.latent_head(raw, logvar, noise, batch.get("kl_weight", 1.0))

    def noise_shape(self, features: Tensor) -> tuple[int, ...] | None:
        if self.latent != "kl":
            return None
        return (features.shape[0], features.shape[1] - 1, 1, self.action_dim)

    # -- evaluation / generation ---------------------------------------------------------------------

    def infer_actions(self, features: Tensor, actions: Tensor | None = None) -> Tensor:
        """The IDM's latent actions [B, T-1, 1, A] (kl: posterior means; sparse: the latents; vq: codes)."""
        self._check_features(features, min_frames=2)
        raw, _ = self.idm(*self._idm_pairs(features))
        return rearrange(self.latent_head.infer(raw), "(b t) k a -> b t k a", b=features.shape[0])

    def sample_prior_actions(self, batch_size, steps, device=None, generator=None) -> Tensor:
        """Draws of the family's prior [B, n, 1, A] (kl: N(0, I); sparse: ``SparsePrior``; vq: uniform
        codes)."""
        return self._prior((batch_size, steps, 1, self.action_dim), device, generator)

    def states(self, features: Tensor) -> Tensor:
        """The state a controller reads (``model/base.py``): the embedded tokens [B, T, N, D]."""
        self._check_features(features, min_frames=1)
        return self._embed(features)

    def rollout(
        self,
        first: Tensor,
        actions: Tensor | ActionFn,
        snap: Callable[[Tensor], Tensor] | None = None,
        steps: int | None = None,
    ) -> Tensor:
        """first [B, t0, N, F] (the last frame is the state: the FDM is Markov in the frame), actions
        [B, n, 1, A] or a function (i, embedded tokens before step i [B, N, D]) -> [B, 1, A] with ``steps``
        = n -> predicted features [B, n, N, F]; ``snap`` as in ``FLAM.rollout``."""
        self._check_features(first, min_frames=1)
        want = (first.shape[0], 1, self.action_dim)
        n = self._rollout_length(actions, steps)
        if not callable(actions):
            self._check_rollout_actions(actions, want)
        f_t, preds = first[:, -1], []
        for i in range(n):
            x_t = self._embed(f_t)
            f_t = self._predict_features(f_t, self.fdm(x_t, self._step_actions(actions, i, x_t, want)))
            if snap is not None:
                f_t = snap(f_t)
            preds.append(f_t)
        return torch.stack(preds, dim=1)

    def _idm_pairs(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """features [B, T, N, F] -> (x_t, x_{t+1}) [(B T-1), N, D]."""
        x = self._embed(features)
        return (
            rearrange(x[:, :-1], "b t n d -> (b t) n d"),
            rearrange(x[:, 1:], "b t n d -> (b t) n d"),
        )


class AdaWorld(SceneLAM):
    """One scene-level latent action, VAE-regularised by default (Gao et al. 2025)."""

    latent = "kl"


class Genie(SceneLAM):
    """One scene-level latent action, vector-quantised by default (Bruce et al. 2024)."""

    latent = "vq"


class WorldModel(SceneLAM):
    """Forward dynamics driven by the ground-truth actions (no IDM)."""

    latent = "actions"
    needs_actions = True

    def __init__(self, cfg) -> None:
        if cfg.num_actions < 1:
            raise ValueError(
                "world_model needs lam.num_actions (ground-truth actions per actor: 7 for MultiGrid, 15 for "
                "Procgen) and lam.num_actors; the simulator presets in configs/ set them"
            )
        if cfg.action_code == "joint" and cfg.num_actions**cfg.num_actors > MAX_JOINT_ACTIONS:
            raise ValueError(
                f"world_model: {cfg.num_actions}^{cfg.num_actors} joint actions is more than "
                f"{MAX_JOINT_ACTIONS} embeddings; use lam.action_code=additive for this many actors"
            )
        super().__init__(cfg)

    @property
    def action_dim(self) -> int:
        """A: joint action count (``joint``) or the concatenated per-actor one-hots (``additive``)."""
        if self.cfg.action_code == "joint":
            return self.cfg.num_actions**self.cfg.num_actors
        return self.cfg.num_actors * self.cfg.num_actions

    def _transition_latents(self, x, current, batch):
        if "actions" not in batch:
            raise ValueError(
                "world_model needs batch['actions'] (ground-truth actions); this dataset's token cache has "
                "none (nuPlan has no actions: use a latent action model there)"
            )
        a = rearrange(self.infer_actions(batch["features"], batch["actions"]), "b t k a -> (b t) k a")
        return a, a.new_zeros(()), {}

    def infer_actions(self, features: Tensor, actions: Tensor | None = None) -> Tensor:
        """Ground-truth actions int [B, T] or [B, T, num_actors] (actions[:, t] moves frame t to t+1; the
        last one is unused) -> one-hot action tokens [B, T-1, 1, A] (see ``action_dim``)."""
        if actions is None:
            raise ValueError("world_model infers nothing: pass the clip's ground-truth actions")
        b, t = features.shape[:2]
        actions = actions.reshape(b, actions.shape[1], -1)[:, : t - 1]  # [B, T-1, actors]
        actors, n = self.cfg.num_actors, self.cfg.num_actions
        expects = (
            f"world_model expects actions int [B, >={t - 1}, {actors}] in [0, {n}) "
            "(lam.num_actors, lam.num_actions)"
        )
        if actions.shape[1:] != (t - 1, actors):
            raise ValueError(f"{expects}, got {tuple(actions.shape)}")
        if torch.compiler.is_compiling():  # no tensor read into Python: the range check runs on the device
            torch._assert_async(((actions >= 0) & (actions < n)).all(), expects)
        elif actions.min() < 0 or actions.max() >= n:
            lo, hi = int(actions.min()), int(actions.max())
            raise ValueError(f"{expects}, got values in [{lo}, {hi}]")
        return self.action_tokens(actions).to(features.dtype)

    def action_tokens(self, actions: Tensor) -> Tensor:
        """int [B, n, num_actors] in [0, num_actions) -> one-hot tokens float [B, n, 1, A]."""
        n = self.cfg.num_actions
        if self.cfg.action_code == "joint":
            radix = n ** torch.arange(self.cfg.num_actors, device=actions.device)  # actor i is digit i
            joint = (actions.long() * radix).sum(-1)  # [B, n]
            return F.one_hot(joint, self.action_dim).float()[:, :, None]
        one_hot = F.one_hot(actions.long(), n).float()  # [B, n, actors, num_actions]
        return rearrange(one_hot, "b t m n -> b t 1 (m n)")

    def sample_prior_actions(self, batch_size, steps, device=None, generator=None) -> Tensor:
        """Uniformly random ground-truth actions as action tokens [B, n, 1, A]."""
        shape = (batch_size, steps, self.cfg.num_actors)
        actions = torch.randint(self.cfg.num_actions, shape, generator=generator)
        device = device if device is not None else self.pos_embed.device
        return self.action_tokens(actions).to(device)
