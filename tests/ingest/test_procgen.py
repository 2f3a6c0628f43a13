"""Procgen source: config checks, episode shapes and info, frame/action alignment, determinism, policies."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from ingest import procgen as P

CFG = P.ProcgenConfig(game="bigfish", max_episode_len=12)


@pytest.fixture(scope="module")
def episode():
    return P.render_episode(CFG, seed=3)


def test_import_is_lazy_and_procgen_import_is_silent():
    code = (
        "import sys, io, contextlib\n"
        "import ingest.procgen as P\n"
        "assert 'procgen' not in sys.modules and 'gym' not in sys.modules\n"
        "P._procgen()\n"
        "assert 'procgen' in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # gym's deprecation banner is swallowed


def test_games_come_from_the_package():
    assert tuple(P._procgen().env.ENV_NAMES) == P.PROCGEN_GAMES
    assert {"bigfish", "leaper", "starpilot"} <= set(P.PROCGEN_GAMES)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(game="pong"), r"Procgen game not found: 'pong'.*bigfish.*starpilot"),
        (dict(distribution_mode="medium"), "distribution_mode 'medium'.*easy, hard"),
        (dict(distribution_mode="exploration"), "distribution_mode 'exploration'"),
        (dict(game="bigfish", distribution_mode="extreme"), "no 'extreme' mode.*starpilot"),
        (dict(resolution=15), "resolution"),
        (dict(resolution=513), "resolution"),
        (dict(max_episode_len=0), "max_episode_len"),
        (dict(policy="ppo"), "unknown Procgen policy 'ppo'.*random"),
        (dict(fps=0.0), "fps"),
    ],
)
def test_bad_config_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        P.ProcgenConfig(**kwargs)


def test_supported_modes_are_accepted():
    P.ProcgenConfig(game="leaper", distribution_mode="extreme")
    P.ProcgenConfig(game="maze", distribution_mode="memory")
    P.ProcgenConfig(game="coinrun", distribution_mode="hard")


def test_negative_seed_is_refused():
    with pytest.raises(ValueError, match="seed"):
        P.render_episode(CFG, -1)


def test_episode_shapes_and_info(episode):
    t = episode.num_frames
    assert 1 <= t <= CFG.max_episode_len
    assert episode.frames.shape == (t, *P.frame_shape(CFG)) == (t, 224, 224, 3)
    assert episode.frames.dtype == np.uint8
    assert episode.actions.shape == (t,) and episode.actions.dtype == np.int64
    assert episode.actions.min() >= 0 and episode.actions.max() < 15
    assert episode.positions is None and episode.fps == CFG.fps
    info = episode.info
    json.dumps(info)
    level_seed, rand_seed, _ = P.episode_seeds(3)
    assert info["level_seed"] == level_seed and 0 <= level_seed < 2**31
    assert info["rand_seed"] == rand_seed and info["seed"] == 3
    assert (info["game"], info["distribution_mode"], info["use_backgrounds"], info["policy"]) == (
        "bigfish",
        "easy",
        False,
        "random",
    )
    assert info["truncated"] == (t == CFG.max_episode_len)
    assert info["action_names"][:2] == ["LEFT+DOWN", "LEFT"] and info["action_names"][4] == "NOOP"
    assert len(info["action_names"]) == 15


def test_same_seed_is_byte_identical(episode):
    again = P.render_episode(CFG, seed=3)
    assert again.frames.tobytes() == episode.frames.tobytes()
    assert np.array_equal(again.actions, episode.actions)
    assert again.info == episode.info


def test_same_seed_in_another_process_is_byte_identical(episode):
    # Ray renders episodes in worker processes: nothing may depend on per-process state.
    code = (
        "import hashlib, ingest.procgen as P\n"
        "ep = P.render_episode(P.ProcgenConfig(game='bigfish', max_episode_len=12), seed=3)\n"
        "print(hashlib.sha256(ep.frames.tobytes() + ep.actions.tobytes()).hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    digest = hashlib.sha256(episode.frames.tobytes() + episode.actions.tobytes()).hexdigest()
    assert out.stdout.strip() == digest


def test_different_seeds_give_different_levels(episode):
    other = P.render_episode(CFG, seed=4)
    assert other.info["level_seed"] != episode.info["level_seed"]
    assert not np.array_equal(other.frames[0], episode.frames[0])


def test_policy_does_not_change_the_level(episode):
    sticky = P.render_episode(replace(CFG, policy="sticky_random"), seed=3)
    assert sticky.info["level_seed"] == episode.info["level_seed"]
    assert np.array_equal(sticky.frames[0], episode.frames[0])


def test_truncation_at_one_frame():
    ep = P.render_episode(replace(CFG, max_episode_len=1), seed=3)
    assert ep.num_frames == 1 and ep.actions.shape == (1,) and ep.info["truncated"] is True


def test_resolution_is_configurable():
    ep = P.render_episode(replace(CFG, resolution=512, max_episode_len=2), seed=3)
    assert ep.frames.shape == (2, 512, 512, 3)
    small = P.render_episode(replace(CFG, resolution=48, max_episode_len=2), seed=3)
    assert small.frames.shape == (2, 48, 48, 3)


def _replay(cfg: P.ProcgenConfig, info: dict, actions: np.ndarray):
    """Replays ``actions`` in a fresh env: per step the 512 render, the 64x64 obs and the first flag
    observed after the action."""
    env = P._make_env(cfg, info["level_seed"], info["rand_seed"])
    renders, obs64, firsts = [], [], []
    _, obs, first = env.observe()
    assert first[0]
    for a in actions:
        renders.append(env.get_info()[0]["rgb"].copy())
        obs64.append(obs["rgb"][0].copy())
        env.act(np.array([a], dtype=np.int32))
        _, obs, first = env.observe()
        firsts.append(bool(first[0]))
    env.close()
    return renders, obs64, firsts


def test_complete_episode_is_aligned_and_excludes_the_next_episodes_first_frame():
    cfg = replace(CFG, game="starpilot", max_episode_len=400)  # starpilot ends in < 150 frames when random
    ep = P.render_episode(cfg, seed=0)
    assert not ep.info["truncated"] and ep.num_frames < cfg.max_episode_len
    renders, obs64, firsts = _replay(cfg, ep.info, ep.actions)
    # frames[t] is the state actions[t] was applied to; the last action ends the episode and what is
    # observed after it (the next episode's first frame) is not kept.
    assert firsts == [False] * (ep.num_frames - 1) + [True]
    for t in (0, ep.num_frames // 2, ep.num_frames - 1):
        assert np.array_equal(ep.frames[t], P._resize(renders[t], cfg.resolution))
    # The 512 render and the 64x64 obs of a step show the same state: the render brought to 64x64 is
    # closer to the obs of its own step than to the obs of the next one (starpilot: ~1.1 vs ~2.5 /255).
    small = [np.asarray(Image.fromarray(r).resize((64, 64), Image.BOX), dtype=np.float32) for r in renders]
    same = np.mean([np.abs(s - o).mean() for s, o in zip(small, obs64, strict=True)])
    shifted = np.mean([np.abs(s - o).mean() for s, o in zip(small[:-1], obs64[1:], strict=True)])
    assert same < 2.0 and same < shifted / 1.5


class _Recorder:
    """A test policy: always the same action, remembering what it saw."""

    def __init__(self, action: int) -> None:
        self.action, self.seen, self.seeds = action, [], []

    def reset(self, seed: int) -> None:
        self.seeds.append(seed)

    def act(self, obs64: np.ndarray) -> int:
        self.seen.append(obs64)
        return self.action


def test_custom_policy_plugs_in(monkeypatch):
    policy = _Recorder(action=4)
    monkeypatch.setitem(P.POLICIES, "noop", lambda cfg, num_actions: policy)
    ep = P.render_episode(replace(CFG, policy="noop", max_episode_len=5), seed=3)
    assert ep.info["policy"] == "noop" and (ep.actions == 4).all()
    assert policy.seeds == [P.episode_seeds(3)[2]]
    assert len(policy.seen) == ep.num_frames
    assert all(o.shape == (64, 64, 3) and o.dtype == np.uint8 for o in policy.seen)
    assert not np.shares_memory(policy.seen[0], policy.seen[1])  # own copies, not gym3's reused buffer

    monkeypatch.setitem(P.POLICIES, "bad", lambda cfg, num_actions: _Recorder(action=15))
    with pytest.raises(ValueError, match="returned action 15"):
        P.render_episode(replace(CFG, policy="bad"), seed=3)


def test_random_policies():
    obs = np.zeros((64, 64, 3), np.uint8)
    uniform, sticky = P.RandomPolicy(15), P.StickyRandomPolicy(15)
    runs = {}
    for name, pol in (("uniform", uniform), ("sticky", sticky)):
        pol.reset(7)
        first = [pol.act(obs) for _ in range(2000)]
        pol.reset(7)
        assert [pol.act(obs) for _ in range(2000)] == first  # reset(seed) replays
        runs[name] = np.array(first)
    assert set(runs["uniform"].tolist()) == set(range(15))
    repeats = {k: float((v[1:] == v[:-1]).mean()) for k, v in runs.items()}
    assert repeats["uniform"] < 0.15  # 1/15 by chance
    assert 0.7 < repeats["sticky"] < 0.85  # 0.75 + 0.25/15
