"""train/lam.py on cached tokens: one process, 2 ranks == 1 rank at the same global batch, two "nodes"
on loopback, kill + resume == uninterrupted, and clear refusals (stale cache, bad keys)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time

import pytest
import torch

from shards.config import ConfigError
from shards.tokens import StaleCacheError
from tests.helpers import REPO, TINY_LAM, kill_run, save_tokenizer
from train import lam as train_lam
from train.common import load_checkpoint
from train.config import load_config


@pytest.fixture(scope="module")
def cache(tiny_data, tiny_tokenizer, tiny_cache):
    """The session's shards, tokenizer and token cache (training only reads them)."""
    return tiny_data, tiny_tokenizer


def overrides(cache, run_dir, steps, *extra):
    root, ckpt = cache
    return [
        *TINY_LAM,
        f"data.root={root}",
        f"data.tokenizer={ckpt}",
        f"lam_train.run_dir={run_dir}",
        f"lam_train.steps={steps}",
        f"lam_train.ckpt_every={steps}",
        *extra,
    ]


def final_weights(run_dir):
    state = load_checkpoint(run_dir / "ckpt" / "latest")
    return state["step"], state["model"]


def torchrun(args, nproc=2, extra=()):
    return [
        *(os.environ.get("PYTHON", "") or __import__("sys").executable,),
        "-m",
        "torch.distributed.run",
        *extra,
        f"--nproc_per_node={nproc}",
        "-m",
        "train.lam",
        "--config",
        "configs/demo.yaml",
        *args,
    ]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def flam_12(cache, run_dir):
    """12 FLAM steps, a checkpoint every 3."""
    return overrides(cache, run_dir, 12, "lam_train.ckpt_every=3")


@pytest.fixture(scope="module")
def two_rank_flam(cache, tmp_path_factory):
    """``flam_12`` on 2 ranks (torchrun, gloo), uninterrupted: one launch for the equality and kill tests."""
    run = tmp_path_factory.mktemp("two-rank-flam") / "run"
    subprocess.run(
        torchrun(flam_12(cache, run), extra=["--standalone"]),
        cwd=REPO,
        check=True,
        capture_output=True,
        env=ENV,
    )
    return run


def test_single_process_trains_validates_and_writes_a_video(cache, tmp_path):
    cfg = load_config(REPO / "configs/demo.yaml", overrides(cache, tmp_path, 4, "lam_train.val_every=4"))
    train_lam.main(cfg)
    step, _ = final_weights(tmp_path)
    assert step == 4
    assert [p.name for p in (tmp_path / "videos").iterdir()] == ["step-0000004.gif"]
    state = load_checkpoint(tmp_path / "ckpt" / "latest")
    assert state["kind"] == "lam" and state["data"]["global_samples"] == 16
    lam = state["config"]["lam"]  # N and F came from the token cache and are saved with the model
    assert (lam["num_tokens"], lam["feature_dim"]) == (8 * 8, 5)


BASELINES = ["genie", "adaworld", "world_model", "playslot", "slotformer", "flam_no_temporal", "flam_global"]


@pytest.mark.parametrize("model", BASELINES)
def test_every_baseline_trains_and_validates_through_the_same_loop(cache, tmp_path, model):
    extra = ("lam_train.val_every=3", f"model={model}", "lam.slot_pretrain_steps=2")
    train_lam.main(load_config(REPO / "configs/demo.yaml", overrides(cache, tmp_path, 3, *extra)))
    state = load_checkpoint(tmp_path / "ckpt" / "latest")
    assert state["step"] == 3 and state["config"]["model"] == model
    assert [p.name for p in (tmp_path / "videos").iterdir()] == ["step-0000003.gif"]


def test_world_model_is_refused_on_a_dataset_without_actions(cache, tmp_path):
    root, _ = cache
    copy = tmp_path / "data"
    shutil.copytree(root / "multigrid", copy / "multigrid")
    for actions in (copy / "multigrid" / "tokens").rglob("actions.npy"):  # as a nuPlan cache: no actions
        actions.unlink()
    for index in (copy / "multigrid" / "tokens").rglob("index.json"):  # ... and none in its records
        data = json.loads(index.read_text())
        for part in data["parts"]:
            part["files"].pop("actions.npy", None)
        index.write_text(json.dumps(data))
    args = [*overrides(cache, tmp_path / "run", 2), f"data.root={copy}", "model=world_model"]
    with pytest.raises(ValueError, match="simulators only"):
        train_lam.main(load_config(REPO / "configs/demo.yaml", args))


# FLAM; Genie (VQ usage all-reduced, restarts drawn from the all-gathered global batch); PlaySlot (the
# stage switch, DDP with unused parameters); FLAM with sparse latents (VCM over the all-gathered batch).
@pytest.mark.torchrun
@pytest.mark.parametrize("model", ["flam", "genie", "playslot", "flam lam.latent=sparse"])
def test_two_ranks_equal_one_process_with_the_same_global_batch(cache, tmp_path, model, request):
    """(Attention key biases are left out: their gradient is zero in exact arithmetic, so Adam turns
    rounding noise into ~1e-5 steps there, in one process and two alike.)"""
    if model == "flam":  # the 2-rank run the kill test compares with, 12 steps
        args, two = (lambda run: flam_12(cache, run)), request.getfixturevalue("two_rank_flam")
    else:
        name, *more = model.split()
        extra = (f"model={name}", *more, "lam.slot_pretrain_steps=2", "lam.vq_restart_every=2")
        args, two = (lambda run: overrides(cache, run, 3, *extra)), tmp_path / "two"
        subprocess.run(
            torchrun(args(two), extra=["--standalone"]), cwd=REPO, check=True, capture_output=True, env=ENV
        )
    train_lam.main(load_config(REPO / "configs/demo.yaml", args(tmp_path / "one")))
    (s1, w1), (s2, w2) = final_weights(tmp_path / "one"), final_weights(two)
    assert s1 == s2 == (12 if model == "flam" else 3)
    for key, tensor in w1.items():
        other = w2[key]
        if key.endswith("qkv.bias"):  # queries and values only
            tensor, other = (torch.cat([t.chunk(3)[0], t.chunk(3)[2]]) for t in (tensor, other))
        torch.testing.assert_close(other, tensor, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.torchrun
def test_two_nodes_on_loopback_complete(cache, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            torchrun(
                overrides(cache, tmp_path, 2),
                nproc=1,
                extra=[
                    "--nnodes=2",
                    f"--node_rank={node}",
                    "--rdzv-backend=c10d",
                    f"--rdzv-endpoint=127.0.0.1:{port}",
                    "--rdzv-id=flamtest",
                ],
            ),
            cwd=REPO,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for node in (0, 1)
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    assert final_weights(tmp_path)[0] == 2


@pytest.mark.torchrun
def test_kill_and_resume_equals_uninterrupted(cache, tmp_path, two_rank_flam):
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        torchrun(flam_12(cache, killed), extra=["--standalone"]),
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 180
    while time.time() < deadline and not (killed / "ckpt" / "latest").exists():
        assert proc.poll() is None
        time.sleep(0.05)
    kill_run(proc)
    assert load_checkpoint(killed / "ckpt" / "latest")["step"] < 12
    # resume on ONE rank: the global batches do not depend on the world size
    train_lam.main(load_config(REPO / "configs/demo.yaml", flam_12(cache, killed)))
    (s1, w1), (s2, w2) = final_weights(two_rank_flam), final_weights(killed)
    assert s1 == s2 == 12
    for name, tensor in w1.items():
        torch.testing.assert_close(w2[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def test_stale_cache_and_bad_keys_are_refused(cache, tmp_path):
    root, _ = cache
    copy = tmp_path / "data"
    shutil.copytree(root / "multigrid", copy / "multigrid")
    cfg = load_config(
        REPO / "configs/demo.yaml", [*overrides(cache, tmp_path / "run", 2), f"data.root={copy}"]
    )
    manifest = copy / "multigrid" / "manifest.json"
    manifest.write_text(manifest.read_text() + "\n")  # as after a re-ingest: other shards, other hash
    with pytest.raises(StaleCacheError, match="re-ingested"):
        train_lam.main(cfg)
    other = save_tokenizer(tmp_path / "other", seed=3)
    with pytest.raises(FileNotFoundError, match="make precompute"):  # no cache made by that tokenizer
        train_lam.main(
            load_config(
                REPO / "configs/demo.yaml",
                [*overrides(cache, tmp_path / "r2", 2), f"data.tokenizer={other}"],
            )
        )
    with pytest.raises(ConfigError, match=r"lam\.num_slotz"):
        load_config(REPO / "configs/demo.yaml", ["lam.num_slotz=3"])
