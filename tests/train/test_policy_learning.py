"""Policy learning from latent actions, stage by stage on small synthetic data: the labelled subset, latent
inference over the cache, pseudo-labels stored beside the cache and refused when stale, behaviour cloning
of a synthetic mapping, evaluation on the real env, and the Table 4 writer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model.action_decoder import ActionDecoderConfig
from model.config import LAMConfig
from model.policy import PolicyNetConfig
from model.tokenizer import Tokenizer, TokenizerConfig
from model.zoo import build_model
from shards.config import to_dict
from shards.policy_data import NO_LABEL, PseudoLabels, StaleLabelsError, labels_dir, write_labels
from shards.tokens import CacheInfo, TokenCache, file_id, write_index, write_part
from train.bc import bc_targets, train_bc
from train.common import Checkpoints
from train.policy_eval import EnvSpec, play, random_policy, summarise
from train.policy_io import load_policy
from train.pseudo_labels import (
    infer_latents,
    label_name,
    label_with_world_model,
    labelled_rows,
    settings_tag,
    window_starts,
)
from train.supervised import FitConfig
from train.table4 import budget_label, table4, write_report

LAM = LAMConfig(dim=32, num_heads=4, depth=1, num_slots=4, num_tokens=4, feature_dim=5, max_frames=8)


def make_cache(
    folder, split: str, lengths: tuple[int, ...], seed: int = 0, manifest: str = "m0"
) -> TokenCache:
    rng = np.random.default_rng(seed)
    codes = [rng.integers(0, 1024, (n, 2, 2)).astype(np.uint16) for n in lengths]
    actions = [rng.integers(0, 15, n) for n in lengths]
    part = folder / split
    write_part(
        part,
        "s0",
        codes,
        [f"d-{i:08d}-0000" for i in range(len(lengths))],
        list(range(len(lengths))),
        [0] * len(lengths),
        actions=actions,
    )
    write_index(part, CacheInfo("d", split, "tok", manifest, (4, 4, 4, 4, 4), (2, 2)), ["s0"])
    return TokenCache(part)


def save_world_model(run_dir, seed: int = 0, window: int = 4):
    torch.manual_seed(seed)
    model = build_model("flam", LAM)
    ckpts = Checkpoints(run_dir)
    config = {"model": "flam", "lam": to_dict(LAM), "lam_train": {"window": window}}
    ckpts.save({"model": model.state_dict(), "kind": "lam", "config": config, "step": 0})
    return ckpts.latest


@pytest.fixture
def caches(tmp_path):
    return make_cache(tmp_path, "train", (8, 8, 5, 8)), make_cache(tmp_path, "val", (8, 6), seed=1)


def test_labelled_subsets_are_nested_and_exact(caches):
    train, _ = caches
    small, large = labelled_rows(train, 7, seed=3), labelled_rows(train, 20, seed=3)
    assert len(small) == 7 and len(large) == 20 and set(small) <= set(large)
    assert np.all(np.diff(large) > 0)
    assert not np.array_equal(labelled_rows(train, 20, seed=4), large)
    with pytest.raises(ValueError, match="label budget 30 must be between 1 and the 29 frames"):
        labelled_rows(train, 30, seed=0)


def cache_tokenizer() -> Tokenizer:
    """A tokenizer whose codes are the test caches': 2 x 2 tokens of FSQ (4, 4, 4, 4, 4)."""
    return Tokenizer(TokenizerConfig(arch="patch", patch_size=8, image_size=16, channels=(8, 8)))


@pytest.mark.parametrize(("length", "window"), [(8, 4), (5, 4), (16, 6), (3, 4), (7, 7)])
def test_windows_cover_every_transition(length, window):
    starts = window_starts(length, window)
    w = min(window, length)
    covered = {s + t for s in starts for t in range(w - 1)}
    assert covered == set(range(length - 1)) and max(starts) + w == length


def test_latents_cover_each_transition_with_the_models_own_inference(caches, tmp_path, seeded_one_thread):
    train, _ = caches
    model = build_model("flam", LAM).eval()
    tokenizer = cache_tokenizer()
    latents, valid = infer_latents(model, tokenizer, train, window=4, device=torch.device("cpu"))
    assert latents.shape == (29, LAM.num_slots, LAM.latent_action_dim)
    ends = np.cumsum(train.clip_lengths()) - 1
    assert not valid[ends].any() and valid.sum() == 29 - len(ends)
    # the first window of clip 0 is exactly what infer_actions gives on it
    codes = torch.from_numpy(np.asarray(train.clip(0, 0, 4)["codes"], np.int64))[None]
    with torch.no_grad():
        z = model.infer_actions(tokenizer.codes_to_features(codes).flatten(2, 3))[0].numpy()
    assert np.allclose(latents[:3], z, atol=1e-5)


def test_pseudo_labels_are_refused_for_a_stale_world_model(caches, tmp_path, seeded_one_thread):
    train, val = caches
    wm = save_world_model(tmp_path / "wm")
    fit = FitConfig(steps=5, batch_size=8)
    ((labels, info),) = label_with_world_model(
        wm,
        cache_tokenizer(),
        train,
        val,
        (12,),
        0,
        15,
        ActionDecoderConfig(dim=16, num_heads=2),
        fit,
        torch.device("cpu"),
    )
    ends = np.cumsum(train.clip_lengths()) - 1
    assert (labels[ends] == NO_LABEL).all() and ((labels >= 0) | (labels == NO_LABEL)).all()
    assert info.labeller_id == file_id(wm) and 0.0 <= info.accuracy <= 1.0 and info.accuracy_frames == 12
    folder = write_labels(train, labels, info)
    assert folder == labels_dir(train, file_id(wm), "budget12-seed0")
    stored = PseudoLabels(folder)
    stored.check(file_id(wm), train)
    assert np.array_equal(stored.labels, labels)
    # the world model trains on: `latest` now names other weights, and the old labels are refused
    retrained = save_world_model(tmp_path / "wm", seed=1)
    assert retrained == wm and file_id(retrained) != info.labeller_id
    with pytest.raises(StaleLabelsError, match=r"were made by world_model .* the model was retrained"):
        stored.check(file_id(retrained), train)
    # and so are labels of a cache re-encoded from other shards
    other = make_cache(tmp_path / "other", "train", (8, 8, 5, 8), manifest="m1")
    with pytest.raises(StaleLabelsError, match="another token cache"):
        stored.check(info.labeller_id, other)


def test_bc_targets_use_ground_truth_where_labelled_and_pseudo_labels_elsewhere():
    actions = np.array([1, 2, 3, 4, 5])
    pseudo = np.array([9, 9, NO_LABEL, 9, 9])
    rows, targets = bc_targets(actions, np.array([0, 3]), pseudo)
    assert rows.tolist() == [0, 1, 3, 4] and targets.tolist() == [1, 9, 4, 9]
    rows, targets = bc_targets(actions, np.array([0, 3]), None)
    assert rows.tolist() == [0, 3] and targets.tolist() == [1, 4]


def quadrant_views(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """64x64 views with a bright square in one quadrant; the action to clone is the quadrant."""
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, 4, n)
    obs = rng.integers(0, 40, (n, 64, 64, 3), dtype=np.uint8)
    for i, a in enumerate(actions):
        y, x = divmod(int(a), 2)
        obs[i, y * 32 + 8 : y * 32 + 24, x * 32 + 8 : x * 32 + 24] = 250
    return obs, actions


def test_bc_learns_a_synthetic_mapping_and_saves_a_playable_policy(tmp_path, seeded_one_thread):
    obs, actions = quadrant_views(512, seed=0)
    net = PolicyNetConfig(channels=(4, 8), hidden=32, num_res_blocks=1)
    env = {"game": "starpilot", "distribution_mode": "easy", "use_backgrounds": False}
    fit = FitConfig(steps=100, batch_size=32, lr=3e-3)
    rows = np.arange(512)
    ckpt = train_bc(
        obs, rows, actions, net, 15, fit, 0, tmp_path / "bc", env, {"method": "t"}, torch.device("cpu")
    )
    policy = load_policy(ckpt)
    test_obs, test_actions = quadrant_views(256, seed=1)
    predicted = policy.logits(torch.from_numpy(test_obs)).argmax(-1).numpy()
    assert (predicted == test_actions).mean() > 0.9
    assert policy.header["kind"] == "bc" and policy.game == "starpilot"
    # the same inputs again: reused, not retrained
    mtime = ckpt.resolve().stat().st_mtime_ns
    again = train_bc(
        obs, rows, actions, net, 15, fit, 0, tmp_path / "bc", env, {"method": "t"}, torch.device("cpu")
    )
    assert again.resolve().stat().st_mtime_ns == mtime


def test_play_keeps_the_first_episodes_of_every_env_and_is_seeded():
    spec = EnvSpec("bigfish", (1_000_000, 100))
    a = play(random_policy(15), spec, num_envs=3, episodes=5, seed=0, max_steps=40)
    b = play(random_policy(15), spec, num_envs=3, episodes=5, seed=0, max_steps=40)
    assert len(a) == 5 and a == b


def test_summary_standard_error_is_over_seeds_when_there_are_several():
    one = summarise([[1.0, 3.0]])
    assert one["mean"] == 2.0 and one["se"] == pytest.approx(np.std([1, 3], ddof=1) / np.sqrt(2))
    two = summarise([[1.0, 3.0], [5.0, 7.0]])
    assert two["mean"] == 4.0 and two["se"] == pytest.approx(np.std([2, 6], ddof=1) / np.sqrt(2))
    assert two["seeds"] == 2 and two["episodes"] == 4


def tiny_run(shift: float) -> dict:
    def s(mean):
        return {"mean": mean + shift, "se": 0.1, "episodes": 8, "seeds": 2}

    return {
        "budgets": {
            "1000": {"flam": s(1.8), "idm": s(2.5), "vanilla_bc": s(1.0)},
            "10000": {"flam": s(8.8), "idm": s(8.0), "vanilla_bc": s(3.6)},
        },
        "label_accuracy": {"1000": {"flam": 0.41, "idm": 0.55}, "10000": {"flam": 0.72, "idm": 0.8}},
        "random": s(0.9),
        "expert": s(24.0),
    }


def test_table4_writer_on_two_tiny_runs(tmp_path):
    results = {"bigfish": tiny_run(0.0), "starpilot": tiny_run(0.2)}
    path = write_report(results, tmp_path, notes=["a note"])
    text = path.read_text()
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[0] == "| Dataset | FLAM | supervised IDM | vanilla BC | random | expert |"
    assert (
        lines[1]
        == "| Bigfish (1k) | 1.80 ± 0.10 | **2.50 ± 0.10** | 1.00 ± 0.10 | 0.90 ± 0.10 | 24.00 ± 0.10 |"
    )
    assert lines[2] == "| Bigfish (10k) | **8.80 ± 0.10** | 8.00 ± 0.10 | 3.60 ± 0.10 |  |  |"
    assert lines[3].startswith("| Starpilot (1k) | 2.00 ± 0.10 | **2.70 ± 0.10** |")
    assert "| Starpilot (10k) | 0.720 | 0.800 |" in text and "a note" in text
    assert json.loads((tmp_path / "scores.json").read_text()) == results
    assert (tmp_path / "return_vs_labels.png").stat().st_size > 1000
    assert budget_label(200) == "200" and budget_label(1500) == "1.5k"
    tie = {"d": {"budgets": {"5": {"flam": tiny_run(0)["random"], "idm": tiny_run(0)["random"]}}}}
    assert "**" not in table4(tie)


def test_other_labeller_settings_give_other_label_names():
    a = settings_tag(ActionDecoderConfig(), FitConfig(steps=300))
    assert a == settings_tag(ActionDecoderConfig(), FitConfig(steps=300))
    assert a != settings_tag(ActionDecoderConfig(), FitConfig(steps=301))
    assert label_name(1000, 0, a) == f"budget1000-seed0-{a}" != label_name(1000, 0)
