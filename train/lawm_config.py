"""``lawm:`` config section (``make lawm``, train/lawm.py): the LAWM-style method of paper 004 and its
baselines. Level ranges are (start, count) of Procgen levels; data and scoring must not share one. The
world models' own sizes and schedule are ``lam`` / ``lam_train`` (the same keys as every world model)."""

from __future__ import annotations

from dataclasses import dataclass, field

from model.action_encoder import ActionEncoderConfig
from model.iql import IQLConfig
from model.lawm import LAWMLossConfig

# Rows of the return table: offline RL and behaviour cloning in the latent space of each world model,
# then the same two on the labelled episodes only with real actions.
METHODS = ("iql_latent", "bc_latent", "iql_real", "bc_real")


@dataclass(frozen=True)
class LAWMConfig:
    run_dir: str = ""  # "" -> runs/lawm-<game>[-brief]
    expert: str = ""  # the behaviour mix's expert; "" -> train (or resume) expert.* as make policy does
    episodes: int = 500  # of the behaviour mix (~200k frames at ~400 frames an episode)
    max_episode_len: int = 500
    # Frames the world model sees: the agent's own 64x64 view size, because evaluation feeds the env's
    # 64x64 observation through the tokenizer (tokenizer.image_size must match).
    resolution: int = 64
    levels: tuple[int, ...] = (0, 100_000)
    eval_levels: tuple[int, ...] = (1_000_000, 100_000)  # unseen by the data
    behaviour_mix: tuple[float, ...] = (0.4, 0.3, 0.3)  # (expert, epsilon-noisy expert, random)
    epsilon: float = 0.3
    world_models: tuple[str, ...] = ("flam", "adaworld")  # Gaussian-IDM models of model/zoo.py
    labelled_fractions: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0)  # of the train split's episodes
    labelled_fraction: float = 0.0  # > 0: this one fraction instead of labelled_fractions
    label_seed: int = 0
    encoder: ActionEncoderConfig = field(default_factory=ActionEncoderConfig)
    loss: LAWMLossConfig = field(default_factory=LAWMLossConfig)
    iql: IQLConfig = field(default_factory=IQLConfig)
    methods: tuple[str, ...] = METHODS
    seeds: int = 3  # policy training seeds per row, each scored on its own env seed
    eval_envs: int = 64
    eval_episodes: int = 64
    eval_max_steps: int = 1000

    def __post_init__(self) -> None:
        for name in ("levels", "eval_levels"):
            value = getattr(self, name)
            if len(value) != 2 or value[1] < 1 or value[0] < 0:
                raise ValueError(f"lawm.{name} must be [start, count] with count >= 1, got {list(value)}")
        (a, n), (b, m) = self.levels, self.eval_levels
        if a < b + m and b < a + n:
            raise ValueError(
                f"lawm.levels {list(self.levels)} overlap lawm.eval_levels {list(self.eval_levels)}: "
                "policies must be scored on levels the data never shows"
            )
        fractions = self.fractions
        if not fractions or not all(0 < f <= 1 for f in fractions):
            raise ValueError(f"lawm labelled fractions must be in (0, 1], got {list(fractions)}")
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"lawm.methods {sorted(unknown)} unknown; choose from {list(METHODS)}")
        if self.resolution != 64:
            raise ValueError(
                f"lawm.resolution must be 64 (got {self.resolution}): policies act on the env's 64x64 view, "
                "which the tokenizer encodes, so the world model must be trained on frames of that size"
            )
        if self.episodes < 2 or self.seeds < 1 or self.eval_envs < 1 or self.eval_episodes < 1:
            raise ValueError("lawm.episodes must be >= 2; lawm.seeds, eval_envs, eval_episodes >= 1")

    @property
    def fractions(self) -> tuple[float, ...]:
        return (self.labelled_fraction,) if self.labelled_fraction > 0 else tuple(self.labelled_fractions)
