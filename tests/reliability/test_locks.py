"""One writer per output (docs/reliability.md): a second training into a run folder, a second
precompute into a token cache and a second ingest into a dataset folder are refused with a message
naming the holder; the lock dies with its holder, so a rerun after a kill is never blocked."""

from __future__ import annotations

import subprocess

import pytest

from ingest.__main__ import main as ingest_main
from shards.files import FolderLocked
from tests.helpers import REPO, TINY_LAM, precompute_config
from train import lam as train_lam
from train import precompute
from train import tokenizer as train_tokenizer
from train.config import load_config

HOLD = """import sys, time
from shards.files import exclusive
with exclusive(sys.argv[1], sys.argv[2]):
    print("held", flush=True)
    time.sleep(300)
"""


@pytest.fixture
def holder(python_cmd):
    """Start another process that holds a folder's lock (as a running job does); killed by pid after."""
    procs: list[subprocess.Popen] = []

    def hold(folder, what: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [*python_cmd, "-c", HOLD, str(folder), what], cwd=REPO, stdout=subprocess.PIPE
        )
        procs.append(proc)
        assert proc.stdout.readline() == b"held\n"
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


def test_second_training_into_a_run_dir_is_refused_and_a_killed_holder_blocks_nothing(
    tiny_data, tiny_tokenizer, tiny_cache, tmp_path, holder
):
    run = tmp_path / "run"
    args = [*TINY_LAM, f"data.root={tiny_data}", f"data.tokenizer={tiny_tokenizer}"]
    cfg = load_config(REPO / "configs/demo.yaml", [*args, f"lam_train.run_dir={run}", "lam_train.steps=1"])
    proc = holder(run, "train/lam.py model=flam")
    with pytest.raises(FolderLocked, match=rf"train/lam.py model=flam, pid {proc.pid} on "):
        train_lam.main(cfg)
    assert not (run / "ckpt").exists()
    proc.kill()  # SIGKILL: the kernel drops its lock
    proc.wait()
    train_lam.main(cfg)
    assert (run / "ckpt" / "latest").exists()


def test_second_tokenizer_training_into_a_run_dir_is_refused(tiny_data, tmp_path, holder):
    run = tmp_path / "tok"
    proc = holder(run, "train/tokenizer.py")
    cfg = load_config(
        REPO / "configs/demo.yaml",
        [f"data.root={tiny_data}", f"tokenizer_train.run_dir={run}", "tokenizer_train.steps=1"],
    )
    with pytest.raises(FolderLocked, match=rf"pid {proc.pid}"):
        train_tokenizer.main(cfg)


def test_second_precompute_into_a_cache_is_refused(tiny_data, tiny_tokenizer, tiny_cache, holder):
    proc = holder(tiny_cache, "precompute")
    with pytest.raises(
        FolderLocked, match=rf"{tiny_cache} is being written by another process \(precompute, pid {proc.pid}"
    ):
        precompute.main(precompute_config(tiny_data, tiny_tokenizer))


def test_second_ingest_is_refused_naming_the_holder(tmp_path, holder, capsys):
    proc = holder(tmp_path / "multigrid", "ingest of multigrid")
    assert ingest_main(["multigrid", "--episodes", "2", "--out", str(tmp_path), "--executor", "local"]) == 2
    assert f"ingest of multigrid, pid {proc.pid}" in capsys.readouterr().err
