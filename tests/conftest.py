"""Shared fixtures (Ray starts once per session, only for tests marked ``ray``; the tiny data set, tokenizer
and token cache are built once per session), and ``--cpu-durations N``: the N tests that used the most CPU
time, a measure that moves less than wall time on a shared machine."""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

import pytest

# One intra-op thread for this process and every subprocess a test starts (torchrun ranks, entry points,
# Ray workers): the tests' tensors are tiny, and on a shared 2-core machine extra threads wait on each
# other (measured: a tiny tokenizer overfit takes 3.5 s of CPU on one thread, and took 200 s of wall time
# with torch's default two threads on a busy machine). Set OMP_NUM_THREADS yourself to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

_CPU_SECONDS: dict[str, float] = {}


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cpu-durations",
        type=int,
        default=0,
        metavar="N",
        help="list the N tests that used the most CPU time (this process and the subprocesses it waited "
        "for; setup, call and teardown; session fixtures count where first used)",
    )


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    start = _cpu_seconds()
    yield
    _CPU_SECONDS[item.nodeid] = _cpu_seconds() - start


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    n = config.getoption("--cpu-durations")
    if not n or not _CPU_SECONDS:
        return
    terminalreporter.section(f"CPU time: {sum(_CPU_SECONDS.values()):.0f} s in all; the {n} largest")
    for nodeid, seconds in sorted(_CPU_SECONDS.items(), key=lambda kv: -kv[1])[:n]:
        terminalreporter.write_line(f"{seconds:8.1f}s  {nodeid}")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from ingest.pipeline import init_ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    init_ray(2)
    yield ray
    ray.shutdown()


@pytest.fixture
def seeded_one_thread():
    """Seeded, single-threaded: tiny model tensors gain nothing from intra-op threads, which only add
    contention (a 10x slowdown on a busy 2-core machine)."""
    import torch

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def python_cmd() -> list[str]:
    """Interpreter of this test session, for subprocess runs of our entry points."""
    return [sys.executable]


# Built once per session for the integrity tests (tests/reliability/, tests/train/test_checkpoints.py, ...):
# a 20-episode MultiGrid set (2 train shards of 16 clips, val and test shards of 2), a random tiny
# tokenizer and the token cache it makes. Tests that damage data copy it first (``copy_dataset``).


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from tests.helpers import ingest_multigrid

    root = tmp_path_factory.mktemp("tiny-data")
    ingest_multigrid(root, episodes=20)
    return root


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory) -> Path:
    from tests.helpers import save_tokenizer

    return save_tokenizer(tmp_path_factory.mktemp("tiny-tok"))


@pytest.fixture(scope="session")
def tiny_cache(tiny_data, tiny_tokenizer) -> Path:
    """The token cache root (``<root>/multigrid/tokens/<id>``) of tiny_data by tiny_tokenizer."""
    from tests.helpers import precompute_config
    from train import precompute

    return precompute.main(precompute_config(tiny_data, tiny_tokenizer))


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """64x64 MultiGrid data, a random tokenizer, its cache and 2-step FLAM, Genie and World Model runs
    (tests/helpers.py:small_world): for the controller and planning tests."""
    from tests.helpers import small_world

    return small_world(tmp_path_factory.mktemp("small-world"), ("flam", "genie", "world_model"))
