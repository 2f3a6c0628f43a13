"""Checkpoints are safe and never lost (docs/reliability.md): weights_only loads at every entry point, a
broken ``latest`` falls back to the newest good checkpoint (never a restart from step 0), pruning only
after a successful resume, resume with a non-CPU map location, and changed settings refused or applied.
"""

from __future__ import annotations

import os
import random
import shutil

import numpy as np
import pytest
import torch

from tests import helpers
from tests.helpers import REPO, precompute_config
from train import evaluate, precompute
from train import lam as train_lam
from train.common import (
    CheckpointError,
    Checkpoints,
    gather_rng_states,
    load_checkpoint,
    load_tokenizer,
    restore_train_state,
    set_rng_state,
    train_state,
)
from train.config import load_config, save_config


def lam_config(root, tokenizer, run_dir, steps: int, *extra: str):
    return helpers.lam_config(
        root, tokenizer, run_dir, f"lam_train.steps={steps}", "lam_train.ckpt_every=2", *extra
    )


@pytest.fixture(scope="module")
def trained_once(tiny_data, tiny_tokenizer, tiny_cache, tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "run"
    train_lam.main(lam_config(tiny_data, tiny_tokenizer, run, 4))
    return run


@pytest.fixture
def trained(trained_once, tmp_path):
    """A 4-step FLAM run with checkpoints at steps 2 and 4 (latest): a copy of one run per test (times
    kept: checkpoints are ordered by them)."""
    run = tmp_path / "run"
    shutil.copytree(trained_once, run, symlinks=True)
    return run


def files(ckpt_dir):
    return {p.name for p in ckpt_dir.glob("ckpt-*.pt")}


# ------------------------------------------------------------------------------ broken latest (F1, F8)


def test_dangling_latest_resumes_from_the_older_checkpoint_and_deletes_nothing(
    trained, tiny_data, tiny_tokenizer, capfd
):
    ckpt = trained / "ckpt"
    step4 = (ckpt / "latest").resolve()
    step4.unlink()  # latest now dangles; the step-2 checkpoint is still good
    (step2,) = files(ckpt)
    capfd.readouterr()
    train_lam.main(lam_config(tiny_data, tiny_tokenizer, trained, 6))
    err = capfd.readouterr().err
    assert "which is missing" in err and f"resuming from {ckpt / step2} (step 2)" in err
    # resumed at 2 (saves at 4 and 6 only), and the step-2 checkpoint was not pruned (keep_last=3)
    assert step2 in files(ckpt) and len(files(ckpt)) == 3
    assert load_checkpoint(ckpt / "latest")["step"] == 6


def tiny_checkpoints(run_dir, steps=(1, 2)) -> Checkpoints:
    ckpts = Checkpoints(run_dir, keep_last=5)
    for step in steps:
        ckpts.save({"step": step, "model": {"w": torch.full((3,), float(step))}})
    return ckpts


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "not ours"])
def test_unreadable_latest_falls_back_with_a_warning_naming_it(tmp_path, damage, capfd):
    tiny_checkpoints(tmp_path)
    bad = (tmp_path / "ckpt" / "latest").resolve()
    data = bad.read_bytes()
    if damage == "not ours":
        torch.save({"step": 9}, bad)  # a torch file, but no checkpoint_format
    else:
        damaged = {"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\x00junk" * 99}
        bad.write_bytes(damaged[damage])
    state = Checkpoints(tmp_path).load_latest()
    assert state["step"] == 1
    err = capfd.readouterr().err
    assert str(bad) in err and "resuming from" in err


def test_no_loadable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    tiny_checkpoints(tmp_path)
    for path in (tmp_path / "ckpt").glob("ckpt-*.pt"):
        path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="none can be loaded"):
        Checkpoints(tmp_path).load_latest()
    assert len(files(tmp_path / "ckpt")) == 2  # nothing deleted


def test_pruning_waits_for_a_successful_resume(tmp_path):
    ckpts = Checkpoints(tmp_path, keep_last=1)
    for step in (1, 2, 3):
        ckpts.save({"step": step})
    assert len(files(tmp_path / "ckpt")) == 3  # saved without a resume first: nothing pruned
    resumed = Checkpoints(tmp_path, keep_last=1)
    assert resumed.load_latest()["step"] == 3
    resumed.save({"step": 4})
    assert len(files(tmp_path / "ckpt")) == 1


def test_a_fresh_run_dir_starts_from_scratch(tmp_path):
    assert Checkpoints(tmp_path).load_latest() is None


# ---------------------------------------------------------------------- GPU resume (fidelity issue)


def test_resume_with_a_non_cpu_map_location_keeps_rng_on_the_cpu(tmp_path):
    """A GPU run passes its device as the map location: the RNG byte tensors must still reach
    torch.set_rng_state on the CPU. The meta device stands in for CUDA (a non-CPU map on this box)."""

    def build():
        model = torch.nn.Linear(3, 2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)

    torch.manual_seed(0)
    model, optimizer, scheduler = build()
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    Checkpoints(tmp_path).save(train_state(model, optimizer, scheduler, 5, rng=gather_rng_states()))
    saved_rng = torch.get_rng_state()
    torch.manual_seed(123)
    with torch.device("meta"):
        model, optimizer, scheduler = build()
    state = Checkpoints(tmp_path).load_latest(map_location=torch.device("meta"))
    assert state["model"]["weight"].device.type == "meta"
    assert restore_train_state(state, model, optimizer, scheduler, rank=0) == 5
    assert torch.equal(torch.get_rng_state(), saved_rng)


# ------------------------------------------------------------------------ weights_only everywhere (F5)


class CreatesAFolder:
    """Unpickling this runs os.mkdir: what a crafted checkpoint can do under weights_only=False."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.fixture
def evil_run(tmp_path, tiny_data):
    """A run folder (config.yaml + ckpt/latest) whose checkpoint creates ``marker`` when unpickled."""
    run, marker = tmp_path / "evil-run", tmp_path / "pwned"
    (run / "ckpt").mkdir(parents=True)
    payload = {"checkpoint_format": 1, "kind": "tokenizer", "step": 0, "x": CreatesAFolder(marker)}
    torch.save(payload, run / "ckpt" / "ckpt-0.pt")
    (run / "ckpt" / "latest").symlink_to("ckpt-0.pt")
    save_config(load_config(REPO / "configs/demo.yaml", [f"data.root={tiny_data}"]), run / "config.yaml")
    return run, marker


def test_crafted_checkpoint_is_refused_at_every_entry_point(evil_run, tiny_data):
    run, marker = evil_run
    latest = run / "ckpt" / "latest"
    entry_points = {
        "resume": lambda: Checkpoints(run).load_latest(),
        "load_tokenizer": lambda: load_tokenizer(latest, torch.device("cpu")),
        "precompute data.tokenizer": lambda: precompute.main(precompute_config(tiny_data, latest)),
        "evaluate.py --runs": lambda: evaluate.main([run], [f"data.root={tiny_data}"]),
    }
    for name, call in entry_points.items():
        with pytest.raises(CheckpointError, match="other than tensors and plain types"):
            call()
        assert not marker.exists(), f"{name} ran code from the checkpoint"


def test_our_checkpoints_hold_only_tensors_and_plain_types(trained, tiny_tokenizer):
    for path in (trained / "ckpt" / "latest", tiny_tokenizer):
        state = torch.load(path, weights_only=True)  # no allow-list: plain weights_only
        assert state["checkpoint_format"] == 1


def test_checkpoints_from_before_the_tensor_only_rng_still_load(tmp_path):
    """Older checkpoints hold numpy's RNG state as a numpy tuple: weights_only allows just the numpy
    globals that rebuild a plain array, so existing runs still resume and evaluate."""
    np.random.seed(3)
    old_rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    expected = np.random.random(4)
    torch.save({"checkpoint_format": 1, "step": 7, "rng": [old_rng]}, tmp_path / "old.pt")
    state = load_checkpoint(tmp_path / "old.pt")
    np.random.seed(0)
    set_rng_state(state["rng"][0])
    assert state["step"] == 7 and np.array_equal(np.random.random(4), expected)


# --------------------------------------------------------------------- changed settings on resume (F6)


def test_changed_settings_are_refused_on_resume_then_applied_when_allowed(trained, tiny_data, tiny_tokenizer):
    changed = ("lam_train.lr=5e-3", "lam_train.batch_size=8", "lam_train.seed=7")
    listed = r"(?s)batch_size: 4 -> 8.*lr: 0.001 -> 0.005.*seed: 0 -> 7.*allow_config_change=true"
    with pytest.raises(ValueError, match=listed):
        train_lam.main(lam_config(tiny_data, tiny_tokenizer, trained, 6, *changed))
    assert load_checkpoint(trained / "ckpt" / "latest")["step"] == 4  # refused before any step
    allowed = (*changed, "lam_train.allow_config_change=true")
    train_lam.main(lam_config(tiny_data, tiny_tokenizer, trained, 6, *allowed))
    state = load_checkpoint(trained / "ckpt" / "latest")
    assert state["step"] == 6 and state["config"]["lam_train"]["lr"] == 5e-3
    assert state["scheduler"]["base_lrs"] == [5e-3]  # the new lr is the one really used
    assert all(g["initial_lr"] == 5e-3 for g in state["optimizer"]["param_groups"])
    old = trained / "config.until-step-0000004.yaml"
    assert "lr: 0.001" in old.read_text() and "lr: 0.005" in (trained / "config.yaml").read_text()
