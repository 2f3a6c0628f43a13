"""What every world model on cached tokens shares: the feature embedding in, the prediction head out, and
the interface the trainer and the evaluation call.

Shapes: B batch, T time, N tokens per frame, F = FSQ width (``cfg.feature_dim``), D model width.

Every model predicts the next frame's FSQ features as ``features_t + head(LN(x̂_{t+1}))`` with a zero-
initialised head, so an untrained model predicts "copy the last frame" and the latents only have to carry
what changes. The interface (see ``model/zoo.py``):

- ``forward(batch) -> (loss, metrics)`` on ``batch["features"]`` [B, T, N, F] (+ ``batch["noise"]`` shaped
  ``noise_shape(features)`` for models with a sampled latent, + ``batch["actions"]`` for models driven by
  ground-truth actions);
- ``infer_actions(features, actions=None)`` -> [B, T-1, K', A'] whatever drives a transition (K' = 1 for a
  scene-level latent, K slots for factored ones, A' = 0 for a model without actions);
- ``rollout(first, actions, snap)`` -> predicted features [B, n, N, F]; ``actions`` may also be a function
  ``(step i, state_i) -> actions [B, K', A']`` called at every step (a controller that reads the state,
  ``train/controller.py``), with ``steps=n``; state_i is the model's state before step i (``states``);
- ``states(features)`` -> [B, T, S, D]: what the dynamics run on (K slots, or the N embedded tokens);
- ``sample_prior_actions(batch_size, steps, generator=...)`` -> [B, n, K', A'] drawn from the model's prior.

Class attributes say what a model has, so evaluation knows which tables and figures apply. ``latent`` is
the latent-action family (``model/latents.py``: "kl" | "sparse" | "vq", chosen by ``lam.latent`` over the
model's own default), "actions" (ground truth) or "none".
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from model.blocks import sincos_pos_embed
from model.latents import FAMILIES, HEAD_ATTRIBUTE, HEADS, resolve_family

# A controller inside a rollout: (step i, state before step i [B, S, D]) -> actions [B, K', A'].
ActionFn = Callable[[int, Tensor], Tensor]


class TokenWorldModel(nn.Module):
    latent: str = "kl"  # what drives a transition: "kl" | "sparse" | "vq" | "actions" | "none"
    needs_actions: bool = False  # forward/infer_actions need ground-truth actions (World Model)
    has_slots: bool = False  # ``slots(features)`` exists (DCI probe)
    factored: bool = False  # one latent action per slot (controllable generation of one entity)
    has_unused_parameters: bool = False  # staged training: DDP must look for parameters without grads
    staged: bool = False  # learns its slots alone for cfg.slot_pretrain_steps first (PlaySlot, SlotFormer)

    def __init__(self, cfg) -> None:
        super().__init__()
        if cfg.num_tokens < 1 or cfg.feature_dim < 1:
            raise ValueError(
                f"LAMConfig.num_tokens={cfg.num_tokens} / feature_dim={cfg.feature_dim}: set both (0 means "
                "'from the token cache', which train/lam.py reads before it builds the model)"
            )
        self.cfg = cfg
        d = cfg.dim
        self.embed = nn.Linear(cfg.feature_dim, d)
        self.pos_embed = nn.Parameter(sincos_pos_embed(cfg.num_tokens, d))  # learned, sin-cos init
        self.norm_out = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.feature_dim)
        # Zero head: the initial prediction is exactly the current frame. Other Linear layers keep
        # PyTorch's fan-in-scaled default init (a fixed std of 0.02 stalled learning at small widths).
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def begin_step(self, step: int) -> None:
        """Called by the trainer before the training forward of global step ``step``, outside torch.compile.
        Models whose training graph depends on the step (Genie's codebook restarts, the two-stage models'
        stage) set Python-level state here, so the compiled forward never reads a tensor into Python; the
        rest ignore it. Without it a model counts its own training forwards (eager use)."""
        # the vq family's codebook restarts (model/vq.py); a model without a latent head has nothing to do
        head = getattr(self, HEAD_ATTRIBUTE.get(self.latent, ""), None)
        if head is not None and hasattr(head, "begin_step"):
            head.begin_step(step)

    def noise_shape(self, features: Tensor) -> tuple[int, ...] | None:
        """Shape of ``batch["noise"]`` (the reparameterisation eps) for ``features``; None: no noise."""
        return None

    # -- latent actions (model/latents.py) -----------------------------------------------------------

    def _init_latent(self, action_dim: int) -> None:
        """Resolve the family (``lam.latent``, else the class default ``latent``) and attach its head."""
        family = resolve_family(self.cfg.latent, self.latent)
        self.latent = family
        setattr(self, HEAD_ATTRIBUTE[family], HEADS[family](action_dim, self.cfg))

    @property
    def latent_head(self) -> nn.Module:
        """The family's head: ``infer`` (IDM output -> latent), ``snap`` (a controller's latent -> the
        form the forward model saw), ``sample`` (prior draws)."""
        if self.latent not in FAMILIES:
            raise ValueError(f"{type(self).__name__} has no latent actions (latent={self.latent!r})")
        return getattr(self, HEAD_ATTRIBUTE[self.latent])

    def _prior(self, shape: tuple[int, ...], device, generator: torch.Generator | None) -> Tensor:
        """Prior draws of the family [..., A] on ``device`` (default: the model's)."""
        device = device if device is not None else self.pos_embed.device
        return self.latent_head.sample(shape, generator).to(device)

    @staticmethod
    def _rollout_length(actions: Tensor | ActionFn, steps: int | None) -> int:
        if callable(actions):
            if steps is None or steps < 1:
                raise ValueError("a rollout driven by a function of the state needs steps >= 1")
            return steps
        if actions.ndim != 4:
            raise ValueError(f"actions must be [B, n, K', A'], got {tuple(actions.shape)}")
        return actions.shape[1]

    @classmethod
    def _step_actions(
        cls, actions: Tensor | ActionFn, i: int, state: Tensor, want: tuple[int, int, int]
    ) -> Tensor:
        """The actions of rollout step i [B, K', A'] from a tensor [B, n, K', A'] or a function."""
        if callable(actions):
            out = actions(i, state)
            cls._check_rollout_actions(out[:, None], want)
            return out
        return actions[:, i]

    def _embed(self, features: Tensor) -> Tensor:
        """[..., N, F] -> [..., N, D]."""
        return self.embed(features) + self.pos_embed

    def _predict_features(self, features_t: Tensor, x_next: Tensor) -> Tensor:
        """features_t [..., N, F] + predicted next-frame tokens x̂ [..., N, D] -> features [..., N, F]."""
        return features_t + self.head(self.norm_out(x_next))

    def _check_features(self, features: Tensor, min_frames: int) -> None:
        n, f = self.cfg.num_tokens, self.cfg.feature_dim
        if (
            not features.is_floating_point()
            or features.ndim != 4
            or tuple(features.shape[2:]) != (n, f)
            or features.shape[1] < min_frames
        ):
            raise ValueError(
                f"features must be float [B, T>={min_frames}, {n}, {f}] (N = num_tokens, F = feature_dim), "
                f"got {features.dtype} {tuple(features.shape)}"
            )

    @staticmethod
    def _check_rollout_actions(actions: Tensor, want: tuple[int, int, int]) -> None:
        b, k, a = want
        if actions.ndim != 4 or (actions.shape[0], *actions.shape[2:]) != want:
            raise ValueError(f"actions must be [{b}, n, {k}, {a}], got {tuple(actions.shape)}")

    @staticmethod
    def prediction_errors(pred: Tensor, features: Tensor) -> dict[str, Tensor]:
        """pred [B, T-1, N, F] vs features [B, T, N, F]: pred_mse and copy_mse (the last-frame-copy
        baseline), means over every element."""
        target = features[:, 1:].float()
        return {
            "pred_mse": (pred.float() - target).square().mean(),
            "copy_mse": (features[:, :-1].float() - target).square().mean(),
        }
