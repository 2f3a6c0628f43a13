"""Factored Latent Action Model (FLAM, paper section 4.2) on cached tokenizer features.

Shapes: B batch, T time, K slots, N tokens per frame (h*w), F = FSQ width (``feature_dim``: 5 for the
simulators' [4]*5 levels, 7 for nuPlan), D model width (``dim``), A = latent action size per slot.

Input is ``batch["features"]`` [B, T, N, F]: the exact FSQ vectors of the cached codes
(``Tokenizer.codes_to_features`` flattened over h, w); the model never sees pixels. Pipeline, teacher-forced
over all transitions t = 0..T-2 at once:

    x = Linear(F -> D)(features) + learned position embedding (2D sin-cos init)        [B, T, N, D]
    slots, attn = Factorizer(x)            slot attention rounds, each + causal temporal [B, T, K, D]
    mu, logvar = IDM(s_t, s_{t+1})         per-slot Gaussian posterior                 [B, T-1, K, A]
    z = mu + sigma * eps (training) | mu (eval)
    ŝ_{t+1} = FDM(s_t, z_t)                predicted next slots                         [B, T-1, K, D]
    x̂_{t+1} = Aggregator(x_t, ŝ_{t+1})      cross-attention, queries = current patches   [B, T-1, N, D]
    pred = features_t + Linear(D -> F)(LN x̂_{t+1})                                      [B, T-1, N, F]

The aggregator is conditioned on x_t (paper) and the output adds the current features back with a zero-
initialised head: the untrained model predicts "copy the last frame", and slots/latents only need to
carry what changes. See ``model/slots.py`` and ``model/dynamics.py`` for the factorizer, the IDM/FDM
reading of the paper and the Global-Coupled ablation.

Capacity matching (paper section 5): with ``action_dim=0`` each of the K slots gets A = D / K, so the K
latents together have D numbers, the same as a monolithic LAM's single latent of size D.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from model.base import ActionFn, TokenWorldModel
from model.blocks import CrossAttentionLayer
from model.config import LAMConfig
from model.dynamics import FDM, IDM
from model.slots import Factorizer


class Aggregator(nn.Module):
    """Cross-attention from the current patches (queries) to the predicted slots (keys/values):
    x_t [B, N, D], slots [B, K, D] -> x̂_{t+1} [B, N, D]. Invariant to the order of the slots."""

    def __init__(self, dim: int, num_heads: int, depth: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            CrossAttentionLayer(dim, num_heads, dropout=dropout) for _ in range(depth)
        )

    def forward(self, x: Tensor, slots: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x, slots)
        return x


class FLAM(TokenWorldModel):
    """Factored latent action model. ``forward(batch) -> (loss, metrics)``; ``infer_actions``,
    ``sample_prior_actions`` and ``rollout`` for evaluation and controllable generation.

    Loss (paper Eq. 6): ``pred_mse + the latent family's term`` (``model/latents.py``, ``lam.latent``), with
    - pred_mse: mean over B, T-1 steps, N tokens and F dims of (pred - features_{t+1})^2;
    - kl (the default): beta * KL(q(z_t^k) || N(0, I)) summed over the A action dims and over the K slots,
      averaged over B and the T-1 steps. Summing over slots (the paper's sum over factors i = 1..K) makes it
      the KL of all D = K*A latent numbers, the same quantity a capacity-matched monolithic LAM (one latent
      of size D) puts under the same beta. ``kl_per_slot`` [K] is the per-slot term (``kl == sum``);
    - sparse: the paper 003 regulariser over the pooled slot latents; vq: one codebook shared by the slots.
    The kl and sparse terms are multiplied by ``batch["kl_weight"]`` when given (the trainer's latent
    warm-up, ``LAMTrainConfig.latent_warmup_steps``).

    Subclasses (``model/object_centric.py``) reuse everything: ``latent = "none"`` drops the IDM and the
    latent actions (A = 0), ``_encode`` is the hook where slots can be frozen.
    """

    latent = "kl"
    has_slots = True
    factored = True

    def __init__(self, cfg: LAMConfig) -> None:
        super().__init__(cfg)
        d = cfg.dim
        a = self.action_dim
        self.factorizer = Factorizer(
            d,
            cfg.num_heads,
            num_slots=cfg.num_slots,
            iters=cfg.slot_iters,
            max_frames=cfg.max_frames,
            temporal=cfg.factorizer_temporal,
            dropout=cfg.dropout,
        )
        self.idm = None
        if a:
            self._init_latent(a)
            gaussian = self.latent_head.gaussian
            self.idm = IDM(d, cfg.num_heads, cfg.depth, a, cfg.coupling, cfg.dropout, gaussian=gaussian)
        self.fdm = FDM(d, cfg.num_heads, cfg.depth, a, cfg.coupling, cfg.dropout)
        self.aggregator = Aggregator(d, cfg.num_heads, cfg.depth, cfg.dropout)

    @property
    def action_dim(self) -> int:
        """A per slot; 0 for a model without latent actions."""
        return 0 if self.latent == "none" else self.cfg.latent_action_dim

    # -- training ------------------------------------------------------------------------------------

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """batch["features"]: float [B, T, N, F], T >= 2 (optional batch["noise"]: the reparameterisation
        eps [B, T-1, K, A] of the kl family, see ``noise_shape``; optional batch["kl_weight"]: a factor on
        the kl / sparse term) -> (scalar loss, detached metrics): loss, pred_mse, copy_mse (last-frame-copy
        baseline), slot_usage [K] (share of token attention mass won by each slot; sums to 1) and the
        family's own (kl: kl, kl_per_slot [K], post_std; sparse: sparse_loss, energy, vcm terms; vq:
        vq_loss, perplexity, codes_used)."""
        features = batch["features"]
        out = self.predict(features, batch.get("noise"), batch.get("kl_weight", 1.0))
        errors = self.prediction_errors(out["pred"], features)
        loss = errors["pred_mse"] + out["latent_loss"]
        metrics = {
            "loss": loss,
            **errors,
            "slot_usage": out["attn"].float().mean(dim=(0, 1, 3)),
            **out["latent_metrics"],
        }
        return loss, {k: v.detach() for k, v in metrics.items()}

    def noise_shape(self, features: Tensor) -> tuple[int, ...] | None:
        """Shape of the reparameterisation noise ``batch["noise"]`` for ``features`` [B, T, N, F]:
        (B, T-1, K, A) for the kl family; None otherwise."""
        if not self.action_dim or self.latent != "kl":
            return None
        return (features.shape[0], features.shape[1] - 1, self.cfg.num_slots, self.action_dim)

    def predict(
        self, features: Tensor, noise: Tensor | None = None, weight: Tensor | float = 1.0
    ) -> dict[str, Any]:
        """Teacher-forced one-step predictions of frames 1..T-1. features: [B, T, N, F] -> dict with
        pred [B, T-1, N, F]; mu (the IDM's output: the posterior mean for kl, the latent for sparse, the
        encoding before quantisation for vq), z [B, T-1, K, A] (+ logvar for kl); slots [B, T, K, D];
        attn [B, T, K, N]; next_slots (the FDM's ŝ) [B, T-1, K, D]; latent_loss (the family's term times
        ``weight``) and latent_metrics. kl: z is sampled in training mode, the posterior mean in eval."""
        self._check_features(features, min_frames=2)
        b = features.shape[0]
        x, slots, attn = self._encode(features)
        current = rearrange(slots[:, :-1], "b t k d -> (b t) k d")  # fold the T-1 transitions into batch
        mu, logvar = self._posterior(current, rearrange(slots[:, 1:], "b t k d -> (b t) k d"))
        if self.action_dim:
            if noise is not None:
                noise = rearrange(noise, "b t k a -> (b t) k a")
            z, latent_loss, latent_metrics = self.latent_head(mu, logvar, noise, weight)
        else:
            z, latent_loss, latent_metrics = mu, mu.new_zeros(()), {}
        next_slots = self.fdm(current, z)
        pred = self._decode(
            rearrange(x[:, :-1], "b t n d -> (b t) n d"),
            rearrange(features[:, :-1], "b t n f -> (b t) n f"),
            next_slots,
        )
        unfold = {"pred": pred, "mu": mu, "z": z, "next_slots": next_slots}
        if logvar is not None:
            unfold["logvar"] = logvar
        out = {k: rearrange(v, "(b t) ... -> b t ...", b=b) for k, v in unfold.items()}
        return {
            **out,
            "slots": slots,
            "attn": attn,
            "latent_loss": latent_loss,
            "latent_metrics": latent_metrics,
        }

    # -- evaluation / generation ---------------------------------------------------------------------

    def slots(self, features: Tensor) -> Tensor:
        """The factorizer's slots, the state the dynamics run on. features [B, T, N, F] -> [B, T, K, D]."""
        self._check_features(features, min_frames=1)
        return self._encode(features)[1]

    def states(self, features: Tensor) -> Tensor:
        """The state a controller reads (``model/base.py``): the slots [B, T, K, D]."""
        return self.slots(features)

    def slot_attention(self, features: Tensor) -> Tensor:
        """The factorizer's token-to-slot assignment (the last slot-attention round's softmax over slots).
        features [B, T, N, F] -> attn [B, T, K, N], summing to 1 over K."""
        self._check_features(features, min_frames=1)
        return self._encode(features)[2]

    def infer_actions(self, features: Tensor, actions: Tensor | None = None) -> Tensor:
        """The IDM's latent actions (kl: posterior means; sparse: the latents; vq: the codes).
        features: [B, T, N, F] -> z [B, T-1, K, A], where z[:, t] drives the transition from frame t to
        frame t+1 (``actions``: unused, no ground truth)."""
        self._check_features(features, min_frames=2)
        b = features.shape[0]
        _, slots, _ = self._encode(features)
        mu, _ = self._posterior(
            rearrange(slots[:, :-1], "b t k d -> (b t) k d"), rearrange(slots[:, 1:], "b t k d -> (b t) k d")
        )
        if self.action_dim:
            mu = self.latent_head.infer(mu)
        return rearrange(mu, "(b t) k a -> b t k a", b=b)

    def sample_prior_actions(
        self,
        batch_size: int,
        steps: int,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Latent actions drawn from the family's prior (kl: N(0, I); sparse: ``SparsePrior``; vq: uniform
        codes): [batch_size, steps, K, A]. For controllable generation, replace one slot's column of
        ``infer_actions`` output with these and ``rollout``."""
        shape = (batch_size, steps, self.cfg.num_slots, self.action_dim)
        if not self.action_dim:
            return torch.zeros(shape, device=device if device is not None else self.pos_embed.device)
        return self._prior(shape, device, generator)

    def rollout(
        self,
        first: Tensor,
        actions: Tensor | ActionFn,
        snap: Callable[[Tensor], Tensor] | None = None,
        steps: int | None = None,
    ) -> Tensor:
        """Autoregressive prediction from context frames under given latent actions.

        first: [B, t0, N, F] context features (t0 >= 1); actions: [B, n, K, A], actions[:, i] drives the
        step from frame t0-1+i to t0+i (so ``infer_actions(gt)[:, t0-1:]`` replays a ground-truth clip), or a
        function (i, slots before step i [B, K, D]) -> [B, K, A] with ``steps`` = n (a controller that reads
        the state); snap: optional map of predicted features onto the code grid (e.g. ``FSQ.snap``),
        applied to every prediction before it is fed back and returned. -> predicted features [B, n, N, F].

        The rollout carries the history the factorizer needs: the embedded tokens of the last
        ``max_frames`` frames (context, then predictions), from which the current slots are recomputed at
        every step, so a predicted frame is bound exactly as a real frame at the same place in a window
        (the temporal factorizer's slot history enters every slot-attention round, so caching one round's
        slots would not be enough). The SAVi ablation has no window: it re-runs over the whole history.
        With n=1 and ``infer_actions`` inputs this equals ``predict``'s teacher-forced prediction of frame t0.
        """
        self._check_features(first, min_frames=1)
        want = (first.shape[0], self.cfg.num_slots, self.action_dim)
        n = self._rollout_length(actions, steps)
        if not callable(actions):
            self._check_rollout_actions(actions, want)
        keep = self.cfg.max_frames if self.cfg.factorizer_temporal else None
        history = self._embed(first)  # [B, t, N, D]
        f_t, preds = first[:, -1], []
        for i in range(n):
            window = history if keep is None else history[:, -keep:]
            slots_t = self.factorizer(window)[0][:, -1]
            a_t = self._step_actions(actions, i, slots_t, want)
            f_t = self._decode(history[:, -1], f_t, self.fdm(slots_t, a_t))
            if snap is not None:
                f_t = snap(f_t)
            preds.append(f_t)
            if i + 1 < n:
                history = torch.cat([history, self._embed(f_t)[:, None]], dim=1)
                if keep is not None:
                    history = history[:, -keep:]
        return torch.stack(preds, dim=1)

    # -- internals -----------------------------------------------------------------------------------

    def _encode(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """features [B, T, N, F] -> (tokens x [B, T, N, D], slots [B, T, K, D], attn [B, T, K, N])."""
        x = self._embed(features)
        slots, attn = self.factorizer(x)
        return x, slots, attn

    def _posterior(self, current: Tensor, next_slots: Tensor) -> tuple[Tensor, Tensor | None]:
        """The IDM's output [B, K, A] and, for kl, its logvar (else None); an empty [B, K, 0] tensor for a
        model without actions."""
        if self.idm is None:
            return current.new_zeros(*current.shape[:2], 0), None
        return self.idm(current, next_slots)

    def _decode(self, x_t: Tensor, features_t: Tensor, next_slots: Tensor) -> Tensor:
        """Aggregator + head: x_t [B, N, D], features_t [B, N, F], ŝ_{t+1} [B, K, D] -> features [B, N, F]."""
        return self._predict_features(features_t, self.aggregator(x_t, next_slots))
