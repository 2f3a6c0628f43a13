"""LAWM-style pipeline stages (paper 004) on small synthetic token caches: the labelled fraction, the
offline-RL transitions (rewards bit for bit, refused without rewards), world-model training with resume,
latent and real-action policies playing Procgen through a tokenizer, and the collapsed-tokenizer check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.action_encoder import ActionEncoderConfig
from model.config import LAMConfig
from model.iql import IQLAgent
from model.lawm import LatentActionWorldModel
from model.tokenizer import Tokenizer, TokenizerConfig
from model.zoo import build_model
from shards.tokens import CacheInfo, TokenCache, write_index, write_part
from train.iql import fit_iql
from train.lawm_data import episode_runs, inverse_accuracy, labelled_episodes, transitions

LAM = LAMConfig(dim=32, num_heads=4, depth=1, num_slots=4, num_tokens=4, feature_dim=5, max_frames=4)
# Tokenizers whose code grid matches the synthetic caches: 2x2 tokens (16 px, 3 stages), 8x8 (64 px).
TOK_2X2 = Tokenizer(TokenizerConfig(image_size=16, channels=(4, 4, 4), num_res_blocks=1))
TOK_8X8 = Tokenizer(TokenizerConfig(image_size=64, channels=(4, 4, 4), num_res_blocks=1))


def test_labelled_fraction_selects_the_same_exact_share_of_episodes():
    ids = np.repeat(np.arange(100, 300), 3)  # 200 episodes, each on several rows
    a, b = labelled_episodes(ids, 0.1, seed=0), labelled_episodes(ids, 0.1, seed=0)
    assert np.array_equal(a, b) and len(a) == 20 and len(np.unique(a)) == 20
    assert not np.array_equal(a, labelled_episodes(ids, 0.1, seed=1))
    assert set(a) <= set(labelled_episodes(ids, 0.5, seed=0))  # nested in the fraction
    assert len(labelled_episodes(ids, 0.001, seed=0)) == 1  # at least one episode
    assert len(labelled_episodes(ids, 0.0, seed=0)) == 0
    assert np.array_equal(labelled_episodes(ids, 1.0, seed=0), np.arange(100, 300))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        labelled_episodes(ids, 1.5, seed=0)


def reward_cache(folder, with_rewards: bool = True) -> TokenCache:
    """Episode 0 in clips 0, 1 (consecutive) and 3 (after a gap), episode 1 in one clip."""
    rng = np.random.default_rng(0)
    episodes, clip_ids, lengths = [0, 1, 0, 0], [0, 0, 1, 3], [4, 4, 4, 4]
    codes = [rng.integers(0, 1024, (n, 2, 2)).astype(np.uint16) for n in lengths]
    extra = {}
    if with_rewards:
        extra["rewards"] = [np.arange(n, dtype=np.float32) + 10 * i for i, n in enumerate(lengths)]
        extra["dones"] = [np.arange(n) == n - 1 for n in lengths]
    write_part(
        folder,
        "s0",
        codes,
        [f"d-{e:08d}-{c:04d}" for e, c in zip(episodes, clip_ids, strict=True)],
        episodes,
        clip_ids,
        actions=[rng.integers(0, 15, n) for n in lengths],
        **extra,
    )
    write_index(folder, CacheInfo("d", "train", "tok", "m", (4, 4, 4, 4, 4), (2, 2)), ["s0"])
    return TokenCache(folder)


def test_transitions_join_consecutive_clips_and_carry_rewards(tmp_path, seeded_one_thread):
    cache = reward_cache(tmp_path / "c")
    runs = episode_runs(cache)
    assert [(e, r.tolist()) for e, r in runs] == [
        (0, [0, 1, 2, 3, 8, 9, 10, 11]),
        (0, [12, 13, 14, 15]),
        (1, [4, 5, 6, 7]),
    ]
    torch.manual_seed(0)
    model = LatentActionWorldModel(build_model("flam", LAM), 15, ActionEncoderConfig(dim=16, num_heads=2))
    data = transitions(model, cache, np.array([1]), TOK_2X2, torch.device("cpu"))
    assert len(data.rewards) == 7 + 3 + 3
    rewards = np.concatenate([np.arange(4) + 10 * i for i in range(4)]).astype(np.float32)
    want = np.concatenate([rewards[[0, 1, 2, 3, 8, 9, 10]], rewards[[12, 13, 14]], rewards[[4, 5, 6]]])
    assert np.array_equal(data.rewards, want)  # bit for bit, the cache's rewards in transition order
    assert data.labelled.tolist() == [False] * 10 + [True] * 3
    assert data.states.shape == (13, LAM.num_slots, LAM.dim) and data.latents.shape[1:] == (4, 8)
    # the state of a frame is the frame on its own: the first next-state of a run is the second state
    assert np.allclose(data.next_states[0], data.states[1], atol=1e-6)


def test_transitions_refuse_a_cache_without_rewards(tmp_path):
    cache = reward_cache(tmp_path / "c", with_rewards=False)
    model = LatentActionWorldModel(build_model("flam", LAM), 15)
    with pytest.raises(ValueError, match=r"holds no rewards.*re-ingest"):
        transitions(model, cache, np.array([0]), TOK_2X2, torch.device("cpu"))


def tiny_reward_cache(folder, n_eps: int = 4, length: int = 8) -> TokenCache:
    """8x8 tokens per frame (a 64x64 frame through a 3-stage tokenizer), rewards, one clip per episode."""
    rng = np.random.default_rng(0)
    write_part(
        folder,
        "s0",
        [rng.integers(0, 1024, (length, 8, 8)).astype(np.uint16) for _ in range(n_eps)],
        [f"d-{e:08d}-0000" for e in range(n_eps)],
        list(range(n_eps)),
        [0] * n_eps,
        actions=[rng.integers(0, 15, length) for _ in range(n_eps)],
        rewards=[rng.random(length).astype(np.float32) for _ in range(n_eps)],
        dones=[np.zeros(length, bool) for _ in range(n_eps)],
    )
    write_index(folder, CacheInfo("d", "train", "tok", "m", (4, 4, 4, 4, 4), (8, 8)), ["s0"])
    return TokenCache(folder)


TINY_LAWM = [
    *("lam.dim=16", "lam.num_heads=2", "lam.depth=1", "lam.num_slots=2", "lam.num_tokens=64"),
    *("lam.max_frames=4", "lam_train.window=4", "lam_train.batch_size=4", "lam_train.steps=6"),
    *("lam_train.warmup_steps=1", "lam_train.log_every=2", "lam_train.ckpt_every=3"),
    *("lam_train.latent_warmup_steps=1", "lawm.encoder.dim=16", "lawm.encoder.num_heads=2"),
    *("lawm.iql.steps=20", "lawm.iql.dim=16", "lawm.iql.num_heads=2"),
]


def test_a_resumed_world_model_run_equals_an_uninterrupted_one(tmp_path, seeded_one_thread):
    import shutil

    from train.common import load_checkpoint
    from train.config import load_config
    from train.lawm_fit import train_lawm

    cache = tiny_reward_cache(tmp_path / "cache")
    cfg = load_config(None, [*TINY_LAWM, "lam_train.keep_last=2"])
    cpu, labelled = torch.device("cpu"), np.array([0, 2])
    done = train_lawm(cfg, "flam", cache, labelled, tmp_path / "a", TOK_8X8, cpu)
    shutil.copytree(tmp_path / "a", tmp_path / "b", symlinks=True)
    steps = {p: load_checkpoint(p)["step"] for p in (tmp_path / "b" / "ckpt").glob("ckpt-*.pt")}
    assert sorted(steps.values()) == [3, 6]
    for path, step in steps.items():  # "killed" after step 3: the step-6 checkpoint never got written
        if step == 6:
            path.unlink()
        else:
            (tmp_path / "b" / "ckpt" / "latest").unlink()
            (tmp_path / "b" / "ckpt" / "latest").symlink_to(path.name)
    resumed = train_lawm(cfg, "flam", cache, labelled, tmp_path / "b", TOK_8X8, cpu)
    a, b = load_checkpoint(done)["model"], load_checkpoint(resumed)["model"]
    assert load_checkpoint(resumed)["step"] == 6
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lawm_stages_train_resume_and_play_the_env(tmp_path, seeded_one_thread):
    """World model on a cache with half its episodes labelled, transitions, latent IQL and real-action BC,
    then both policies play Procgen from its 64x64 view through a (random) tokenizer; a finished world
    model is reused, one trained with other labels is refused."""
    from tests.helpers import save_tokenizer
    from train.common import load_tokenizer
    from train.config import load_config
    from train.lawm import latent_policy_act, rl_data
    from train.lawm_fit import load_lawm, train_lawm
    from train.policy_eval import EnvSpec, play

    n_eps, length = 4, 8
    cache = tiny_reward_cache(tmp_path / "cache", n_eps, length)
    cfg = load_config(None, TINY_LAWM)
    cpu = torch.device("cpu")
    labelled = labelled_episodes(np.arange(n_eps), 0.5, seed=0)
    tok_cfg = TokenizerConfig(image_size=64, channels=(4, 4, 4), num_res_blocks=1)
    tok, _ = load_tokenizer(save_tokenizer(tmp_path / "tok", tok_cfg), cpu)
    ckpt = train_lawm(cfg, "flam", cache, labelled, tmp_path / "wm", tok, cpu)
    assert train_lawm(cfg, "flam", cache, labelled, tmp_path / "wm", tok, cpu) == ckpt  # finished: reused
    with pytest.raises(ValueError, match="other settings or data"):
        train_lawm(cfg, "flam", cache, labelled[:1], tmp_path / "wm", tok, cpu)
    lawm, state = load_lawm(ckpt, cpu)
    assert state["step"] == 6 and np.isfinite(state["metrics"]["align"])
    data = transitions(lawm, cache, labelled, tok, cpu)
    assert data.labelled.sum() == 2 * (length - 1)
    inverse = inverse_accuracy(lawm, transitions(lawm, cache, np.zeros(0, np.int64), tok, cpu))
    assert 0 <= inverse["accuracy"] <= 1 and inverse["transitions"] == n_eps * (length - 1)
    spec = EnvSpec("bigfish", (1_000_000, 10))
    for method, space, size in (
        ("iql_latent", "latent", data.latents.shape[-1]),
        ("bc_real", "discrete", 15),
    ):
        arrays = rl_data(data, method)
        assert len(arrays["rewards"]) == (len(data.rewards) if space == "latent" else 2 * (length - 1))
        agent = IQLAgent(space, LAM.dim // 2, size, cfg.lawm.iql)
        fit_iql(agent, arrays, 0, cpu, bc=method.startswith("bc"))
        returns = play(
            latent_policy_act(lawm, agent, tok, cpu), spec, num_envs=2, episodes=2, seed=0, max_steps=5
        )
        assert len(returns) == 2


def test_a_cache_whose_codes_never_change_is_refused(tmp_path):
    from train.lawm import check_codes_move

    moving = tiny_reward_cache(tmp_path / "moving")
    assert 0.5 < check_codes_move(moving) <= 1.0  # random codes: almost every token changes
    folder = tmp_path / "still"
    write_part(
        folder,
        "s0",
        [np.zeros((4, 8, 8), np.uint16)] * 2,
        ["d-00000000-0000", "d-00000001-0000"],
        [0, 1],
        [0, 0],
    )
    write_index(folder, CacheInfo("d", "train", "tok", "m", (4, 4, 4, 4, 4), (8, 8)), ["s0"])
    with pytest.raises(ValueError, match="collapsed"):
        check_codes_move(TokenCache(folder))
