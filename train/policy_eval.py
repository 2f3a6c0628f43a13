"""Score policies by playing Procgen levels no demo showed (paper section 5.3), and film one.

A policy here is ``act(obs, rng) -> actions``: uint8 views [N, 64, 64, 3] -> int actions [N], drawing
any randomness from the generator it is given (policies sample from their softmax, as the expert does).
Each seed runs ``num_envs`` games of Procgen's batched env on levels drawn from the evaluation range and
keeps the first episodes of every env, ``ceil(episodes / num_envs)`` each, so short episodes are not
over-represented; an episode still running after ``max_steps`` counts with its return so far.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ingest.procgen import make_batched_env
from train.policy_io import LoadedPolicy
from train.visuals import write_gif

Act = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class EnvSpec:
    """The games a policy is scored on."""

    game: str
    levels: tuple[int, int]  # (start, count)
    distribution_mode: str = "easy"


def random_policy(num_actions: int) -> Act:
    return lambda obs, rng: rng.integers(num_actions, size=len(obs))


def network_policy(policy: LoadedPolicy, device: torch.device) -> Act:
    """Sample from the network's softmax (inverse CDF of one uniform draw per env)."""

    def act(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        logits = policy.logits(torch.from_numpy(obs).to(device))
        cdf = torch.softmax(logits.double(), -1).cumsum(-1).cpu().numpy()
        draws = rng.random(len(obs))[:, None] * cdf[:, -1:]
        return np.minimum((cdf <= draws).sum(-1), cdf.shape[1] - 1)

    return act


def play(act: Act, spec: EnvSpec, num_envs: int, episodes: int, seed: int, max_steps: int) -> list[float]:
    """Returns of ``episodes`` episodes of ``act`` (the first ones of each env), in env order."""
    per_env = math.ceil(episodes / num_envs)
    env = make_batched_env(
        spec.game,
        num_envs,
        start_level=spec.levels[0],
        num_levels=spec.levels[1],
        seed=seed,
        distribution_mode=spec.distribution_mode,
    )
    rng = np.random.default_rng([seed, 0xE7A1])
    done: list[list[float]] = [[] for _ in range(num_envs)]
    running, steps = np.zeros(num_envs), np.zeros(num_envs, np.int64)
    cut = np.zeros(num_envs, bool)  # past max_steps: recorded already, ignored until it really ends
    _, obs, _ = env.observe()
    for _ in range(per_env * (max_steps + 1) * 4):  # a bound, never reached: every env finishes or is cut
        if all(len(d) >= per_env for d in done):
            break
        env.act(np.asarray(act(obs["rgb"], rng), dtype=np.int32))
        rew, obs, first = env.observe()
        running += rew
        steps += 1
        for i in range(num_envs):
            if not cut[i] and (first[i] or steps[i] >= max_steps) and len(done[i]) < per_env:
                done[i].append(float(running[i]))
            if first[i]:
                running[i], steps[i], cut[i] = 0.0, 0, False
            elif steps[i] >= max_steps:
                cut[i] = True
    env.close()
    return [r for env_returns in done for r in env_returns[:per_env]][:episodes]


def film(act: Act, spec: EnvSpec, seed: int, steps: int, path: Path, size: int = 256) -> tuple[Path, float]:
    """A GIF of ``act`` playing one unseen level (the 512x512 render, scaled to ``size``), through episode
    ends, for ``steps`` frames. Returns the path and the reward collected."""
    env = make_batched_env(
        spec.game,
        1,
        start_level=spec.levels[0],
        num_levels=spec.levels[1],
        seed=seed,
        distribution_mode=spec.distribution_mode,
        render=True,
    )
    rng = np.random.default_rng([seed, 0xF11])
    frames, total = [], 0.0
    _, obs, _ = env.observe()
    for _ in range(steps):
        frames.append(np.asarray(Image.fromarray(env.get_info()[0]["rgb"]).resize((size, size), Image.BOX)))
        env.act(np.asarray(act(obs["rgb"], rng), dtype=np.int32))
        rew, obs, _ = env.observe()
        total += float(rew[0])
    env.close()
    return write_gif(np.stack(frames), path, fps=15.0), total


def summarise(returns_per_seed: list[list[float]]) -> dict[str, float | int | list[float]]:
    """Mean return over every episode of every seed, and its standard error: over the seeds' means when
    there are several seeds (the spread between training runs), else over the episodes."""
    flat = np.asarray([r for rs in returns_per_seed for r in rs], np.float64)
    means = np.asarray([np.mean(rs) for rs in returns_per_seed], np.float64)
    if len(means) > 1:
        se = float(np.std(means, ddof=1) / math.sqrt(len(means)))
    else:
        se = float(np.std(flat, ddof=1) / math.sqrt(len(flat))) if len(flat) > 1 else 0.0
    return {
        "mean": float(flat.mean()),
        "se": se,
        "se_episodes": float(np.std(flat, ddof=1) / math.sqrt(len(flat))) if len(flat) > 1 else 0.0,
        "episodes": len(flat),
        "seeds": len(means),
        "seed_means": [float(m) for m in means],
    }
