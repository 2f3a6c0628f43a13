"""train/tokenizer.py: one process writes a checkpoint, images and TensorBoard events; a 2-rank torchrun
(gloo) run killed part-way and resumed ends with the same weights as an uninterrupted one."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import torch

from tests.helpers import REPO, kill_run
from train import tokenizer as train_tokenizer
from train.common import load_checkpoint, load_tokenizer
from train.config import load_config

TINY = [
    "tokenizer.channels=[8,8,8]",
    "tokenizer.num_res_blocks=1",
    "data.num_workers=1",
    "tokenizer_train.batch_size=8",
    "tokenizer_train.frames_per_clip=2",
    "tokenizer_train.log_every=2",
    "tokenizer_train.image_every=4",
    "data.shuffle_buffer=8",
]


@pytest.fixture(scope="module")
def shards(tiny_data):
    """The session's shards (tokenizer training only reads them)."""
    return tiny_data


def test_single_process_run_writes_checkpoint_images_and_events(shards, tmp_path):
    cfg = load_config(
        REPO / "configs/demo.yaml",
        [
            *TINY,
            f"data.root={shards}",
            "tokenizer_train.steps=4",
            f"tokenizer_train.run_dir={tmp_path}",
            "tokenizer_train.ckpt_every=4",
        ],
    )
    latest = train_tokenizer.main(cfg)
    state = load_checkpoint(latest)
    assert state["step"] == 4 and state["kind"] == "tokenizer"
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["step-0000004.png"]
    assert list((tmp_path / "tb").iterdir()) and (tmp_path / "config.yaml").exists()
    model, _ = load_tokenizer(latest, torch.device("cpu"))  # rebuilt from the checkpoint's own config
    assert model.cfg.channels == (8, 8, 8)


@pytest.mark.torchrun
def test_torchrun_kill_and_resume_matches_uninterrupted_run(shards, tmp_path, python_cmd):
    def cmd(run_dir):
        return [
            *python_cmd,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "train.tokenizer",
            "--config",
            "configs/demo.yaml",
            *TINY,
            f"data.root={shards}",
            "tokenizer_train.steps=12",
            "tokenizer_train.ckpt_every=3",
            f"tokenizer_train.run_dir={run_dir}",
            # in-process reading: each rank's stream position is still saved and restored (the worker
            # slots of that state are tested in tests/shards/test_loader.py), without 2 more processes
            "data.num_workers=0",
        ]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd(tmp_path / "clean"), cwd=REPO, check=True, capture_output=True, env=env)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        cmd(killed),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    deadline = time.time() + 180
    while time.time() < deadline and not (killed / "ckpt" / "latest").exists():
        assert proc.poll() is None
        time.sleep(0.05)
    kill_run(proc)
    step_at_kill = load_checkpoint(killed / "ckpt" / "latest")["step"]
    assert step_at_kill < 12
    subprocess.run(cmd(killed), cwd=REPO, check=True, capture_output=True, env=env)

    a = load_checkpoint(tmp_path / "clean" / "ckpt" / "latest")
    b = load_checkpoint(killed / "ckpt" / "latest")
    assert a["step"] == b["step"] == 12
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, msg=f"{name} differs after resume")
