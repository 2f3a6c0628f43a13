"""Multi-node training as docs/multinode.md runs it: two torchrun "nodes" on loopback (c10d rendezvous, gloo),
one rank killed mid-run, torchrun's elastic restart (``--max-restarts``) brings the job back from its last
checkpoint, and the final weights equal an uninterrupted run's.

The agents run with ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``, as the runbook says: torch >= 2.4 hands the
workers the rendezvous's TCPStore and keeps it across restarts, so the restarted process group can read the
previous attempt's gloo/NCCL addresses and fail ("connection refused") or hang; seen here in 6 of 10 restarts
without it (torch 2.13), none of 9 with it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import REPO, TINY_LAM
from train import lam as train_lam
from train.common import load_checkpoint
from train.config import load_config

STEPS = 24


def lam_args(tiny_data, tiny_tokenizer, run_dir) -> list[str]:
    return [
        *TINY_LAM,
        f"data.root={tiny_data}",
        f"data.tokenizer={tiny_tokenizer}",
        f"lam_train.run_dir={run_dir}",
        f"lam_train.steps={STEPS}",
        "lam_train.ckpt_every=3",
    ]


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc: no psutil needed)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


@pytest.mark.slow
@pytest.mark.torchrun
def test_a_rank_killed_mid_run_restarts_elastically_and_ends_with_the_uninterrupted_weights(
    tiny_data, tiny_tokenizer, tiny_cache, tmp_path
):
    train_lam.main(
        load_config(REPO / "configs/demo.yaml", lam_args(tiny_data, tiny_tokenizer, tmp_path / "one"))
    )
    run = tmp_path / "elastic"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
    }
    agents = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc_per_node=1",
                "--max-restarts=1",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint=127.0.0.1:{port}",
                "--rdzv-id=flam-elastic",
                "-m",
                "train.lam",
                "--config",
                "configs/demo.yaml",
                *lam_args(tiny_data, tiny_tokenizer, run),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        # Kill the worker of the second agent once the job has a checkpoint, well before its end.
        deadline = time.time() + 300
        while not (run / "ckpt" / "latest").exists():
            assert time.time() < deadline and all(a.poll() is None for a in agents), "no checkpoint came"
            time.sleep(0.05)
        killed_at = load_checkpoint(run / "ckpt" / "latest")["step"]
        workers = children(agents[1].pid)
        assert workers, "the second agent has no worker to kill"
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        logs = [a.communicate(timeout=600)[1] for a in agents]
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()
    assert killed_at < STEPS, "the job ended before a rank could be killed: raise STEPS"
    assert all(a.returncode == 0 for a in agents), "\n".join(log[-2000:] for log in logs)
    # The killed worker was seen as a failure (torchrun logs its exit code); that its agent still ended with
    # 0 and the job reached the last step means the worker group was restarted and resumed.
    assert "exitcode: -9" in logs[1], logs[1][-2000:]
    one, elastic = (load_checkpoint(r / "ckpt" / "latest") for r in (tmp_path / "one", run))
    assert one["step"] == elastic["step"] == STEPS
    for name, tensor in one["model"].items():
        torch.testing.assert_close(elastic["model"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
