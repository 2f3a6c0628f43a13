"""Procgen source: one episode = one level, played by a behaviour policy, rendered at high resolution.

Each frame is the 512x512 human render (``env.get_info()[0]["rgb"]``) box-filtered down to
``resolution``; the policy sees the 64x64 agent observation of the same step (checked: the two
show the same state, the 512 render downscaled to 64 differs from ``obs["rgb"]`` by ~0.2/255 per
pixel on average, against 1-6/255 for the neighbouring step).

Alignment (the ``Episode`` convention): ``frames[t]`` is the state at step t and ``actions[t]`` the
action applied to it, producing ``frames[t + 1]``; ``rewards[t]`` is what that action earned and
``dones[t]`` whether the episode ended with it; ``obs[t]`` is the 64x64 view the policy acted on.
gym3 resets automatically, so the terminal state is never observed: after the last action the next
observation (``first=True``) is the first frame of the next episode and is dropped. ``actions[T - 1]``
is therefore the action that ended the episode (or, when truncated, the one applied to the last kept
frame).

``procgen`` is imported lazily: importing it pulls in gym3 and the old ``gym`` (with a deprecation
banner on stderr) and its first environment in a process loads the assets (1.5-3 s, once).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.util
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np
from PIL import Image

from ingest.episode import Episode

# procgen-mirror 0.10.7 ``procgen.env.ENV_NAMES``; only used when procgen is not installed (e.g. the GPU
# image), so that configs naming a game still import there.
_FALLBACK_GAMES = (
    "bigfish",
    "bossfight",
    "caveflyer",
    "chaser",
    "climber",
    "coinrun",
    "dodgeball",
    "fruitbot",
    "heist",
    "jumper",
    "leaper",
    "maze",
    "miner",
    "ninja",
    "plunder",
    "starpilot",
)


def _installed_game_names() -> tuple[str, ...]:
    """``procgen.env.ENV_NAMES`` read from the installed source without importing it (importing costs
    ~0.2 s and prints gym's banner; ``ingest.config`` imports this module at start-up)."""
    spec = importlib.util.find_spec("procgen")
    if spec is None or not spec.submodule_search_locations:
        return _FALLBACK_GAMES
    env_py = Path(next(iter(spec.submodule_search_locations))) / "env.py"
    with contextlib.suppress(OSError, SyntaxError):
        for node in ast.parse(env_py.read_text()).body:
            names = [getattr(t, "id", None) for t in getattr(node, "targets", ())]
            if isinstance(node, ast.Assign) and "ENV_NAMES" in names:
                return tuple(ast.literal_eval(node.value))
    return _FALLBACK_GAMES


PROCGEN_GAMES: tuple[str, ...] = _installed_game_names()

# Modes the C++ side accepts per game (procgen/src/game.cpp asserts, which abort the whole process
# instead of raising, so they are checked here first). "exploration" is left out on purpose: it pins
# every episode to one fixed level, which defeats one-level-per-seed.
DISTRIBUTION_MODES: dict[str, tuple[str, ...]] = {
    "easy": PROCGEN_GAMES,
    "hard": PROCGEN_GAMES,
    "extreme": ("chaser", "dodgeball", "leaper", "starpilot"),
    "memory": ("caveflyer", "dodgeball", "heist", "jumper", "maze", "miner"),
}

RENDER_SIZE = 512  # side of procgen's human render
OBS_SIZE = 64  # side of the agent observation the policy sees


@dataclass(frozen=True)
class ProcgenConfig:
    """What to render. ``policy`` names an entry of ``POLICIES``."""

    game: str = "bigfish"
    distribution_mode: str = "easy"
    use_backgrounds: bool = False
    resolution: int = 224  # output frames are resolution x resolution, box-filtered from the 512 render
    max_episode_len: int = 500  # frames; longer episodes are cut (info["truncated"] = True)
    # A name in POLICIES, or the path of a policy checkpoint (train/expert.py's, or a BC policy's):
    # actions are then sampled from that network, seeded per episode.
    policy: str = "random"
    fps: float = 15.0
    # Levels episodes are drawn from: num_levels = 0 is every level (a hash of the episode seed), else
    # [start_level, start_level + num_levels), e.g. expert demos on levels the BC policy is never scored on.
    start_level: int = 0
    num_levels: int = 0
    # policy = "mixed" (offline-RL data): each episode is played, by a draw from its seed, by the expert
    # checkpoint ``expert``, the expert with probability-``epsilon`` uniform random actions, or uniform
    # random actions, with probabilities ``behaviour_mix``; the episode's meta records which.
    expert: str = ""
    behaviour_mix: tuple[float, ...] = (0.4, 0.3, 0.3)  # (expert, noisy expert, random)
    epsilon: float = 0.3

    def __post_init__(self) -> None:
        if self.game not in PROCGEN_GAMES:
            raise ValueError(
                f"Procgen game not found: {self.game!r}. Valid games: {', '.join(PROCGEN_GAMES)}"
            )
        if self.distribution_mode not in DISTRIBUTION_MODES:
            raise ValueError(
                f"unknown Procgen distribution_mode {self.distribution_mode!r}; choose one of "
                f"{', '.join(DISTRIBUTION_MODES)}"
            )
        supported = DISTRIBUTION_MODES[self.distribution_mode]
        if self.game not in supported:
            raise ValueError(
                f"Procgen game {self.game!r} has no {self.distribution_mode!r} mode; only "
                f"{', '.join(supported)} do (every game has 'easy' and 'hard')"
            )
        if not 16 <= self.resolution <= RENDER_SIZE:
            raise ValueError(
                f"resolution must be in [16, {RENDER_SIZE}] (frames are downscaled from the "
                f"{RENDER_SIZE}x{RENDER_SIZE} render), got {self.resolution}"
            )
        if self.max_episode_len < 1:
            raise ValueError(f"max_episode_len must be >= 1, got {self.max_episode_len}")
        if self.policy == "mixed":
            self._check_mix()
        if self.policy not in POLICIES and not Path(self.policy).exists():
            raise ValueError(
                f"unknown Procgen policy {self.policy!r}: neither one of {', '.join(POLICIES)} nor an "
                "existing policy checkpoint (train an expert first: make expert DATASET=<game> writes "
                "runs/expert-<game>/ckpt/latest)"
            )
        if not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        check_level_range(self.start_level, self.num_levels, "source.")

    def _check_mix(self) -> None:
        if not self.expert or not Path(self.expert).exists():
            raise ValueError(
                f"source.policy=mixed needs source.expert, an expert checkpoint, got {self.expert!r}; "
                "train one: make expert DATASET=<game> writes runs/expert-<game>/ckpt/latest"
            )
        mix = self.behaviour_mix
        if len(mix) != 3 or min(mix) < 0 or not sum(mix) > 0:
            raise ValueError(
                f"source.behaviour_mix must be three weights >= 0 (expert, noisy expert, random) with a "
                f"positive sum, got {list(mix)}"
            )
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"source.epsilon must be in [0, 1], got {self.epsilon}")

    def unused_keys(self) -> tuple[str, ...]:
        """Keys that do not shape the data under this policy: left out of the dataset's identity, so
        datasets ingested before they existed still match their config."""
        return () if self.policy == "mixed" else ("expert", "behaviour_mix", "epsilon")


MAX_LEVEL = 2**31  # procgen level seeds are int32


def check_level_range(start_level: int, num_levels: int, prefix: str = "") -> None:
    """Refuse a level range procgen cannot play; num_levels = 0 means every level (start_level 0)."""
    if start_level < 0 or num_levels < 0 or start_level + num_levels > MAX_LEVEL:
        raise ValueError(
            f"{prefix}start_level={start_level}, {prefix}num_levels={num_levels} is not a range of procgen "
            f"levels: both must be >= 0 and their sum <= 2**31"
        )
    if num_levels == 0 and start_level:
        raise ValueError(
            f"{prefix}start_level={start_level} needs {prefix}num_levels > 0 ({prefix}num_levels=0 means "
            "every level, which starts at 0)"
        )


def level_of(level_hash: int, start_level: int, num_levels: int) -> int:
    """The level an episode plays: its hash in [0, 2**31) itself, or mapped into the configured range."""
    return level_hash if num_levels == 0 else start_level + level_hash % num_levels


def frame_shape(cfg: ProcgenConfig) -> tuple[int, int, int]:
    """(H, W, 3) of every frame ``render_episode(cfg, ...)`` returns."""
    return (cfg.resolution, cfg.resolution, 3)


# --- behaviour policies ---------------------------------------------------------------------------


class Policy(Protocol):
    """A behaviour policy for one player.

    ``reset(seed)`` is called once per episode, before the first ``act``; all randomness must come
    from that seed so episodes are reproducible. ``act(obs64)`` gets the agent observation of the
    current step, [64, 64, 3] uint8 RGB (a copy the policy may keep, e.g. to stack frames), and
    returns an action index in [0, num_actions) (see ``info["action_names"]``).

    A trained agent fits the same protocol: its factory loads the checkpoint once (it receives the
    config, e.g. to check the game it was trained on) and ``act`` runs the network on ``obs64``.
    """

    def reset(self, seed: int) -> None: ...

    def act(self, obs64: np.ndarray) -> int: ...


class RandomPolicy:
    """Uniform over all actions, independently at every step."""

    def __init__(self, num_actions: int) -> None:
        self.num_actions = num_actions
        self._rng = np.random.default_rng(0)

    def reset(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def act(self, obs64: np.ndarray) -> int:
        return int(self._rng.integers(self.num_actions))


class StickyRandomPolicy(RandomPolicy):
    """Uniform random actions held for a geometric number of steps (mean 1 / (1 - repeat_prob) = 4).

    Holding an action gives longer, more visible movements than per-step noise, whose effects mostly
    cancel out within a few frames."""

    def __init__(self, num_actions: int, repeat_prob: float = 0.75) -> None:
        super().__init__(num_actions)
        self.repeat_prob = repeat_prob
        self._prev: int | None = None

    def reset(self, seed: int) -> None:
        super().reset(seed)
        self._prev = None

    def act(self, obs64: np.ndarray) -> int:
        if self._prev is None or self._rng.random() >= self.repeat_prob:
            self._prev = int(self._rng.integers(self.num_actions))
        return self._prev


class CheckpointPolicy:
    """A trained policy network (expert or BC) acting on the 64x64 view: actions are sampled from its
    softmax with the episode's own generator (inverse CDF of one uniform draw per step), so an episode
    is a function of its seed. The network runs single-threaded (ingest parallelises over episodes, and
    one thread keeps its float sums, hence its samples, identical on every machine)."""

    def __init__(self, cfg: ProcgenConfig, num_actions: int) -> None:
        from train.policy_io import load_policy_cached

        self.net = load_policy_cached(cfg.policy)
        self.net.check_env(cfg.game, cfg.distribution_mode, cfg.use_backgrounds, num_actions)
        self._rng = np.random.default_rng(0)

    def reset(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def act(self, obs64: np.ndarray) -> int:
        probs = self.net.probs_one_thread(obs64[None])[0]  # float64 [num_actions]
        cdf = np.cumsum(probs)
        return int(min(np.searchsorted(cdf, self._rng.random() * cdf[-1], side="right"), len(probs) - 1))


BEHAVIOURS = ("expert", "noisy_expert", "random")


class MixedPolicy:
    """A behaviour mix for offline RL: per episode, drawn from its seed with ``cfg.behaviour_mix``, the
    expert (``cfg.expert``), the expert taking a uniform random action with probability ``cfg.epsilon`` at
    each step, or uniform random actions. ``behaviour`` names the current episode's draw."""

    def __init__(self, cfg: ProcgenConfig, num_actions: int) -> None:
        self.expert = CheckpointPolicy(replace(cfg, policy=cfg.expert), num_actions)
        self.num_actions, self.epsilon = num_actions, cfg.epsilon
        self.weights = np.asarray(cfg.behaviour_mix, np.float64) / sum(cfg.behaviour_mix)
        self._rng = np.random.default_rng(0)
        self.behaviour = BEHAVIOURS[0]

    def reset(self, seed: int) -> None:
        self._rng = np.random.default_rng([seed, 0xB3A])
        self.behaviour = BEHAVIOURS[int(self._rng.choice(len(BEHAVIOURS), p=self.weights))]
        self.expert.reset(seed)

    def act(self, obs64: np.ndarray) -> int:
        noisy = self.behaviour == "noisy_expert" and self._rng.random() < self.epsilon
        if self.behaviour == "random" or noisy:
            return int(self._rng.integers(self.num_actions))
        return self.expert.act(obs64)


# name -> factory(cfg, num_actions). The one place a policy name is resolved (``make_policy``).
PolicyFactory = Callable[[ProcgenConfig, int], Policy]
POLICIES: dict[str, PolicyFactory] = {
    "random": lambda cfg, num_actions: RandomPolicy(num_actions),
    "sticky_random": lambda cfg, num_actions: StickyRandomPolicy(num_actions),
    "mixed": MixedPolicy,
}


def make_policy(cfg: ProcgenConfig, num_actions: int) -> Policy:
    """``cfg.policy`` by name, else the checkpoint at that path."""
    factory = POLICIES.get(cfg.policy, CheckpointPolicy)
    return factory(cfg, num_actions)


# --- rendering ------------------------------------------------------------------------------------


@functools.cache
def _procgen() -> ModuleType:
    # The old gym, imported by procgen, prints a deprecation banner to stderr on import.
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import procgen
    return procgen


def episode_seeds(seed: int) -> tuple[int, int, int]:
    """(level_seed, rand_seed, policy_seed) of episode ``seed``: independent streams, level seeds in
    [0, 2**31) as procgen requires. The level does not depend on the policy, so changing the policy
    replays the same levels."""
    if seed < 0:
        raise ValueError(f"episode seed must be >= 0, got {seed}")
    words = np.random.SeedSequence(seed, spawn_key=(0,)).generate_state(2)
    level_seed, rand_seed = (int(w) >> 1 for w in words)  # uint32 -> [0, 2**31)
    policy_seed = int(np.random.SeedSequence(seed, spawn_key=(1,)).generate_state(1)[0])
    return level_seed, rand_seed, policy_seed


def _resize(frame: np.ndarray, size: int) -> np.ndarray:
    """[512, 512, 3] -> [size, size, 3] uint8. BOX (area average) rather than LANCZOS: Procgen's art is
    flat-coloured sprites with hard edges, where LANCZOS rings (halos, colours that are not in the
    sprite) while BOX keeps exact averages; it is also faster (~1 ms vs ~4 ms a frame)."""
    if size == frame.shape[0]:
        return frame.copy()
    return np.asarray(Image.fromarray(frame).resize((size, size), Image.BOX))


def action_names(combos: list[tuple[str, ...]]) -> list[str]:
    """Procgen's key combos as strings: ("LEFT", "DOWN") -> "LEFT+DOWN", () -> "NOOP"."""
    return ["+".join(c) if c else "NOOP" for c in combos]


def _make_env(cfg: ProcgenConfig, level_seed: int, rand_seed: int) -> Any:
    """A gym3 env that plays only level ``level_seed``. Creating one costs 0.5-2 ms (plus 1.5-3 s for the
    first in a process, to load assets), nothing against an episode (~2 ms a frame), so each episode
    gets a fresh env: no state can leak from one episode into the next."""
    return _procgen().ProcgenGym3Env(
        num=1,
        env_name=cfg.game,
        start_level=level_seed,
        num_levels=1,
        distribution_mode=cfg.distribution_mode,
        use_backgrounds=cfg.use_backgrounds,
        render_mode="rgb_array",  # adds the 512x512 render to get_info()
        rand_seed=rand_seed,  # picks level seeds only: with num_levels=1 frames do not depend on it
        num_threads=0,  # step in this thread: 1.4x faster than worker threads for one env, same frames
    )


def make_batched_env(
    game: str,
    num: int,
    *,
    start_level: int = 0,
    num_levels: int = 0,
    seed: int = 0,
    distribution_mode: str = "easy",
    use_backgrounds: bool = False,
    render: bool = False,
) -> Any:
    """Procgen's own batched env (gym3): ``num`` games stepped in C++ by ``env.act(int32 [num])``, then
    ``rew, obs, first = env.observe()`` with ``obs["rgb"]`` uint8 [num, 64, 64, 3]. Episodes reset
    automatically (``first`` marks a new one) on levels drawn from [start_level, start_level +
    num_levels) by ``seed`` (num_levels = 0: every level). ``render`` adds the 512x512 frame to
    ``get_info()`` (costly: only for videos)."""
    check_level_range(start_level, num_levels)
    return _procgen().ProcgenGym3Env(
        num=num,
        env_name=game,
        start_level=start_level,
        num_levels=num_levels,
        distribution_mode=distribution_mode,
        use_backgrounds=use_backgrounds,
        render_mode="rgb_array" if render else None,
        rand_seed=seed,
    )


def render_episode(cfg: ProcgenConfig, seed: int) -> Episode:
    """Play one level with ``cfg.policy`` until it ends or ``cfg.max_episode_len`` frames are collected.

    Returns frames [T, R, R, 3] uint8 (R = cfg.resolution), actions [T] int64, rewards [T] float32,
    dones [T] bool and the policy's views obs [T, 64, 64, 3] uint8, 1 <= T <= max_episode_len.
    Deterministic: the same (cfg, seed) gives byte-identical arrays.
    """
    level_hash, rand_seed, policy_seed = episode_seeds(seed)
    level_seed = level_of(level_hash, cfg.start_level, cfg.num_levels)
    env = _make_env(cfg, level_seed, rand_seed)
    try:
        num_actions = len(env.combos)
        policy = make_policy(cfg, num_actions)
        policy.reset(policy_seed)
        frames: list[np.ndarray] = []
        views: list[np.ndarray] = []
        actions: list[int] = []
        rewards: list[float] = []
        _, obs, first = env.observe()
        while True:
            frames.append(_resize(env.get_info()[0]["rgb"], cfg.resolution))
            views.append(obs["rgb"][0].copy())
            action = policy.act(views[-1].copy())
            if not 0 <= action < num_actions:
                raise ValueError(f"policy {cfg.policy!r} returned action {action}, not in [0, {num_actions})")
            actions.append(int(action))
            env.act(np.array([action], dtype=np.int32))
            rew, obs, first = env.observe()
            rewards.append(float(rew[0]))
            # Stepping once past the cap tells a cut episode from one that ended exactly at the cap.
            if first[0] or len(frames) == cfg.max_episode_len:
                break
        truncated = not bool(first[0])
        # After an auto-reset, info describes the level that just ended.
        level_complete = bool(first[0]) and bool(env.get_info()[0]["prev_level_complete"])
        info = {
            "game": cfg.game,
            "distribution_mode": cfg.distribution_mode,
            "use_backgrounds": cfg.use_backgrounds,
            "level_seed": level_seed,
            "rand_seed": rand_seed,
            "policy": cfg.policy,
            "seed": int(seed),
            "truncated": truncated,
            "level_complete": level_complete,
            "episode_return": float(np.sum(rewards, dtype=np.float64)),
            "behaviour": getattr(policy, "behaviour", cfg.policy),
            "action_names": action_names(env.combos),
        }
    finally:
        env.close()
    dones = np.zeros(len(actions), dtype=bool)
    dones[-1] = not truncated  # the game ended it (died, finished, or its own time limit)
    return Episode(
        frames=np.stack(frames),
        actions=np.asarray(actions, dtype=np.int64),
        rewards=np.asarray(rewards, dtype=np.float32),
        dones=dones,
        obs=np.stack(views),
        fps=cfg.fps,
        info=info,
    )
