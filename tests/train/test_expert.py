"""The expert trainer on the real batched Procgen env: resume equals an uninterrupted run, config checks,
and its checkpoint acts as an ingest policy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from train import expert
from train.common import load_checkpoint
from train.config import load_config
from train.policy_io import load_policy

TINY = [
    "expert.num_envs=4",
    "expert.num_steps=16",
    "expert.n_pi=2",
    "expert.e_aux=1",
    "expert.num_minibatches=2",
    "expert.net.channels=[4,4]",
    "expert.net.hidden=16",
    "expert.net.num_res_blocks=1",
]
PHASE = 4 * 16 * 2  # env steps per phase


def tiny_config(run_dir: Path, phases: int, *extra: str):
    return load_config(
        "configs/starpilot.yaml",
        [*TINY, f"expert.run_dir={run_dir}", f"expert.total_steps={phases * PHASE}", *extra],
    )


def test_resume_equals_uninterrupted(tmp_path, seeded_one_thread):
    """2 phases in one go == 1 phase, stop, resume, 1 more: weights, optimiser, counters, curve."""
    expert.main(tiny_config(tmp_path / "a", 2))
    expert.main(tiny_config(tmp_path / "b", 1))
    assert load_checkpoint(tmp_path / "b/ckpt/latest")["step"] == PHASE
    expert.main(tiny_config(tmp_path / "b", 2))
    a, b = load_checkpoint(tmp_path / "a/ckpt/latest"), load_checkpoint(tmp_path / "b/ckpt/latest")
    assert a["step"] == b["step"] == 2 * PHASE and a["phase"] == b["phase"] == 2
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["curve"] == b["curve"] and a["env_states"] == b["env_states"]
    assert (tmp_path / "a/curve.csv").read_text() == (tmp_path / "b/curve.csv").read_text()


def test_resume_with_another_config_is_refused(tmp_path, seeded_one_thread):
    expert.main(tiny_config(tmp_path, 1))
    with pytest.raises(ValueError, match=r"another expert config:\n  lr: 0.0005 -> 0.001"):
        expert.main(tiny_config(tmp_path, 2, "expert.lr=1e-3"))


def test_the_expert_is_a_procgen_game():
    cfg = load_config("configs/multigrid.yaml", TINY)
    with pytest.raises(ValueError, match=r"Procgen game; data\.dataset='multigrid'"):
        expert.ExpertTrainer(cfg, torch.device("cpu"))


def test_checkpoint_rebuilds_its_policy(tmp_path, seeded_one_thread):
    latest = expert.main(tiny_config(tmp_path, 1, "expert.algo=ppo"))
    policy = load_policy(latest)
    assert policy.header["kind"] == "expert" and policy.header["arch"] == "shared"
    policy.check_env("starpilot", "easy", False, 15)
    with pytest.raises(ValueError, match="trained on starpilot"):
        policy.check_env("bigfish", "easy", False, 15)
    obs = torch.zeros(3, 64, 64, 3, dtype=torch.uint8).numpy()
    probs = policy.probs_one_thread(obs)
    assert probs.shape == (3, 15) and abs(probs.sum(1) - 1).max() < 1e-9
