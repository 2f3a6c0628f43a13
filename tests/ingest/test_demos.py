"""Expert demonstrations through the ordinary ingest (``source.policy=<checkpoint>``), and rewards, dones
and policy observations in the shards (format version 2): deterministic per seed, inside the level range,
carried bit for bit from the env through the shards and the loader into the token cache; version-1
shards still read."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from ingest import procgen as P
from ingest.config import RunOptions, build_config
from ingest.pipeline import run_ingest
from model.policy import ActorCritic, PolicyNetConfig
from model.tokenizer import TokenizerConfig
from shards.decode import decode_sample
from shards.format import ClipMeta, npy_load
from shards.loader import ClipDataset
from shards.manifest import load_manifest
from shards.policy_data import build_policy_obs, frame_starts, load_policy_obs
from shards.tar import RawSample
from shards.tokens import TokenCache, cache_dir
from shards.video import decode_video
from tests.helpers import save_tokenizer, shard_members
from train import precompute
from train.common import Checkpoints
from train.config import load_config
from train.policy_io import policy_header

GAME = "starpilot"


def save_policy(run_dir, game: str = GAME, seed: int = 0):
    """An untrained (but not uniform) expert checkpoint in the format train/expert.py writes."""
    torch.manual_seed(seed)
    agent = ActorCritic(PolicyNetConfig(channels=(4, 4), hidden=16, num_res_blocks=1), 15, "shared")
    torch.nn.init.normal_(agent.pi.weight, std=0.5)  # a policy with preferences, still stochastic
    ckpts = Checkpoints(run_dir)
    ckpts.save({"model": agent.state_dict(), "policy": policy_header("expert", agent, game, "easy", False)})
    return ckpts.latest


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return save_policy(tmp_path_factory.mktemp("expert"))


def demo_cfg(policy_path, **source):
    return P.ProcgenConfig(game=GAME, resolution=32, max_episode_len=40, policy=str(policy_path), **source)


def test_demos_are_deterministic_per_seed_and_stochastic(policy):
    cfg = demo_cfg(policy)
    a, b, c = P.render_episode(cfg, 5), P.render_episode(cfg, 5), P.render_episode(cfg, 6)
    for name in ("frames", "actions", "rewards", "dones", "obs"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert not np.array_equal(a.actions[:20], c.actions[:20])
    assert len(set(a.actions.tolist())) > 1  # sampled, not the argmax
    assert a.obs.shape == (a.num_frames, 64, 64, 3) and a.rewards.dtype == np.float32
    assert a.info["policy"] == str(policy)


def test_demos_play_only_levels_of_their_range(policy):
    cfg = demo_cfg(policy, start_level=1000, num_levels=7)
    levels = {P.render_episode(replace(cfg, max_episode_len=2), s).info["level_seed"] for s in range(12)}
    assert levels <= set(range(1000, 1007)) and len(levels) > 1


@pytest.mark.parametrize(
    ("source", "match"),
    [
        (dict(start_level=-1, num_levels=5), "not a range"),
        (dict(start_level=2**31 - 2, num_levels=5), "not a range"),
        (dict(start_level=10, num_levels=0), "needs source.num_levels > 0"),
        (dict(policy="runs/nowhere/ckpt/latest"), "neither one of random"),
    ],
)
def test_bad_level_ranges_and_policies_are_refused(source, match):
    with pytest.raises(ValueError, match=match):
        P.ProcgenConfig(game=GAME, **source)


def test_a_policy_of_another_game_is_refused(tmp_path):
    other = save_policy(tmp_path, game="bigfish")
    with pytest.raises(ValueError, match="trained on bigfish"):
        P.render_episode(demo_cfg(other), 0)


@pytest.fixture(scope="module")
def demos(tmp_path_factory, policy):
    root = tmp_path_factory.mktemp("demos")
    overrides = {
        "dataset": "starpilot_demos",
        "episodes": 6,
        "clip_len": 8,
        "episodes_per_shard": 6,
        "source": {"resolution": 32, "max_episode_len": 40, "policy": str(policy), "num_levels": 50},
    }
    cfg = build_config(GAME, overrides)
    run_ingest(cfg, RunOptions(out=str(root), executor="local", progress=False))
    return root, cfg


def test_manifest_records_the_checkpoint_file_and_the_level_range(demos, policy):
    root, _ = demos
    manifest = load_manifest(root / "starpilot_demos")
    source = manifest["config"]["source"]
    assert source["policy"] == str(policy.resolve()) != str(policy)  # the file, not the moving link
    assert (source["start_level"], source["num_levels"]) == (0, 50)
    assert manifest["format_version"] == 2
    assert "mean_return" in manifest["splits"]["train"]


def test_rewards_dones_and_views_survive_ingest_bit_for_bit(demos):
    root, cfg = demos
    ds = root / "starpilot_demos"
    manifest = load_manifest(ds)
    seen = 0
    for shard in manifest["shards"]:
        members = shard_members(ds / shard["path"])
        metas = {
            name[: -len(".json")]: json.loads(data)
            for name, data in members.items()
            if name.endswith(".json")
        }
        for key, meta in metas.items():
            assert meta["has_rewards"] and meta["has_obs"] and meta["format_version"] == 2
            ep = P.render_episode(cfg.source, _episode_seed(cfg, meta["episode"]))
            lo, hi = meta["start_frame"], meta["start_frame"] + meta["num_frames"]
            assert np.array_equal(npy_load(members[f"{key}.rewards.npy"]), ep.rewards[lo:hi])
            assert np.array_equal(npy_load(members[f"{key}.dones.npy"]), ep.dones[lo:hi])
            assert np.array_equal(decode_video(members[f"{key}.obs.mp4"]), ep.obs[lo:hi])
            seen += 1
    assert seen == manifest["totals"]["clips"] > 0


def _episode_seed(cfg, index: int) -> int:
    from ingest.block import episode_seed

    return episode_seed(cfg.seed, index)


def test_rewards_reach_the_loader_and_the_token_cache(demos, tmp_path):
    root, _ = demos
    ds = root / "starpilot_demos"
    tok = save_tokenizer(
        tmp_path / "tok", TokenizerConfig(image_size=32, channels=(8, 8, 8), num_res_blocks=1)
    )
    cfg = load_config(
        "configs/starpilot.yaml",
        {
            "data": {
                "dataset": "starpilot_demos",
                "root": str(root),
                "num_workers": 0,
                "tokenizer": str(tok),
            },
            "precompute": {"splits": ["train"]},
        },
    )
    cfg = replace(cfg, precompute=replace(cfg.precompute, report_clips=2))
    out = precompute.main(cfg)
    cache = TokenCache(out / "train")
    cache.require("rewards")
    from_loader = {s["key"]: s for s in ClipDataset(ds, "train")}
    for i, key in enumerate(cache.keys()):
        clip = cache.clip(i)
        assert clip["rewards"].dtype == np.float32 and clip["dones"].dtype == bool
        assert np.array_equal(clip["rewards"], from_loader[key]["rewards"].numpy())
        assert np.array_equal(clip["dones"], from_loader[key]["dones"].numpy())
    assert cache_dir(root, "starpilot_demos", out.name, "train") == out / "train"
    # the policy's views, decoded beside the cache, row for row in cache order
    build_policy_obs(cache, ds, progress=False)
    views, rows = load_policy_obs(cache), frame_starts(cache)
    for i, key in enumerate(cache.keys()):
        n = len(cache.clip(i)["codes"])
        assert np.array_equal(views[rows[i] : rows[i] + n], from_loader_views(ds, key))


def from_loader_views(ds, key: str) -> np.ndarray:
    for shard in load_manifest(ds)["shards"]:
        members = shard_members(ds / shard["path"])
        if f"{key}.obs.mp4" in members:
            return decode_video(members[f"{key}.obs.mp4"])
    raise KeyError(key)


def test_a_cache_without_rewards_says_how_to_get_them(tmp_path):
    from tests.helpers import ingest_multigrid

    ds = ingest_multigrid(tmp_path, episodes=10)
    tok = save_tokenizer(tmp_path / "tok")
    cfg = load_config(
        "configs/demo.yaml", {"data": {"root": str(tmp_path), "num_workers": 0, "tokenizer": str(tok)}}
    )
    cfg = replace(cfg, precompute=replace(cfg.precompute, splits=("train",), report_clips=2))
    out = precompute.main(cfg)
    assert ds.exists()
    with pytest.raises(ValueError, match=r"holds no rewards.*re-ingest the dataset and rerun precompute"):
        TokenCache(out / "train").require("rewards")


def test_version_1_samples_still_read():
    """A sample as format version 1 wrote it: no has_rewards / has_obs fields in the meta."""
    frames = np.random.default_rng(0).integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
    from shards.video import encode_frames

    meta = ClipMeta(
        "d", "procgen", "train", 0, 0, 0, 4, 16, 16, 15.0, "libx264rgb", True, "mp4", False, False
    )
    raw = {k: v for k, v in json.loads(meta.to_json()).items() if k not in ("has_rewards", "has_obs")}
    raw["format_version"] = 1
    sample = decode_sample(
        RawSample(
            "s.tar", "d-00000000-0000", {"mp4": encode_frames(frames), "json": json.dumps(raw).encode()}
        )
    )
    assert np.array_equal(sample["frames"].numpy(), frames) and "rewards" not in sample
    assert not ClipMeta.from_json(json.dumps(raw)).has_rewards
    with pytest.raises(ValueError, match=r"format_version 3, this code reads \[1, 2\]"):
        ClipMeta.from_json(json.dumps({**raw, "format_version": 3}))
