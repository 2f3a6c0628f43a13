"""Shared fixtures. Ray starts once per session, only for tests marked ``ray``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
