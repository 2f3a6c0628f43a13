"""Fault injection: precompute and training SIGKILLed at random points several times in a row (a seeded
loop), then run to the end, give the same cache bytes and the same weights as an uninterrupted run."""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, TINY_LAM, copy_dataset, tree_bytes
from train import lam as train_lam
from train.common import load_checkpoint
from train.config import load_config

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
KILLS = [2, pytest.param(6, marks=pytest.mark.slow)]


def kill_at_random_points(cmd: list[str], progress: Callable[[], int], kills: int, seed: int) -> None:
    """Run ``cmd`` ``kills`` times, each killed (SIGKILL, by pid) at a random point: after ``progress()``
    (parts or checkpoints written) has moved 1-2 steps from where this launch started, plus 0-0.5 s.
    A launch that finishes first is simply done. Then one more launch runs it to the end."""
    rng = random.Random(seed)
    for _ in range(kills):
        proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        target = progress() + rng.randint(1, 2)
        deadline = time.time() + 300
        while proc.poll() is None and progress() < target and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.5))
        proc.kill()
        _, err = proc.communicate()
        assert proc.returncode in (0, -9), err.decode()[-3000:]
    subprocess.run(cmd, cwd=REPO, env=ENV, check=True, capture_output=True)


@pytest.mark.parametrize("kills", KILLS)
def test_precompute_killed_again_and_again_gives_the_uninterrupted_cache(
    tiny_data, tiny_tokenizer, tiny_cache, tmp_path, python_cmd, kills
):
    root = copy_dataset(tiny_data, tmp_path / "data")
    cmd = [
        *python_cmd,
        "-m",
        "train.precompute",
        "--config",
        "configs/demo.yaml",
        f"data.tokenizer={tiny_tokenizer}",
        f"data.root={root}",
        "data.num_workers=0",
        "precompute.batch_clips=8",
        "precompute.report_clips=4",
    ]
    cache = root / "multigrid" / "tokens" / tiny_cache.name
    kill_at_random_points(cmd, lambda: len(list(cache.glob("*/parts/*/part.json"))), kills, seed=kills)
    assert tree_bytes(cache) == tree_bytes(tiny_cache)


class Saves:
    """Progress of a training run: how many checkpoints it has saved (``latest`` changes each time)."""

    def __init__(self, run_dir: Path) -> None:
        self.latest, self.seen, self.count = run_dir / "ckpt" / "latest", None, 0

    def __call__(self) -> int:
        try:
            target = os.readlink(self.latest)
        except OSError:
            return self.count
        if target != self.seen:
            self.seen, self.count = target, self.count + 1
        return self.count


@pytest.mark.parametrize("kills", KILLS)
def test_training_killed_again_and_again_gives_the_uninterrupted_weights(
    tiny_data, tiny_tokenizer, tiny_cache, tmp_path, python_cmd, seeded_one_thread, kills
):
    def args(run_dir):
        return [
            *TINY_LAM,
            f"data.root={tiny_data}",
            f"data.tokenizer={tiny_tokenizer}",
            f"lam_train.run_dir={run_dir}",
            "lam_train.steps=12",
            "lam_train.ckpt_every=2",
            "lam_train.keep_last=2",
        ]

    train_lam.main(load_config(REPO / "configs/demo.yaml", args(tmp_path / "clean")))
    killed = tmp_path / "killed"
    cmd = [*python_cmd, "-m", "train.lam", "--config", "configs/demo.yaml", *args(killed)]
    kill_at_random_points(cmd, Saves(killed), kills, seed=kills)
    clean, resumed = (load_checkpoint(run / "ckpt" / "latest") for run in (tmp_path / "clean", killed))
    assert clean["step"] == resumed["step"] == 12
    for name, tensor in clean["model"].items():
        torch.testing.assert_close(resumed["model"][name], tensor, rtol=0, atol=0, msg=name)
    for i, state in clean["optimizer"]["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(resumed["optimizer"]["state"][i][key], value, rtol=0, atol=0)
