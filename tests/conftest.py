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


# Built once per session for the integrity tests (tests/test_integrity.py, test_checkpoints.py, ...):
# a 20-episode MultiGrid set (2 train shards of 16 clips, val and test shards of 2), a random tiny
# tokenizer and the token cache it makes. Tests that damage data copy it first (``copy_dataset``).


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from .helpers import ingest_multigrid

    root = tmp_path_factory.mktemp("tiny-data")
    ingest_multigrid(root, episodes=20)
    return root


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory) -> Path:
    from .helpers import save_tokenizer

    return save_tokenizer(tmp_path_factory.mktemp("tiny-tok"))


@pytest.fixture(scope="session")
def tiny_cache(tiny_data, tiny_tokenizer) -> Path:
    """The token cache root (``<root>/multigrid/tokens/<id>``) of tiny_data by tiny_tokenizer."""
    from train import precompute

    from .helpers import precompute_config

    return precompute.main(precompute_config(tiny_data), tiny_tokenizer)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """64x64 MultiGrid data, a random tokenizer, its cache and 2-step FLAM, Genie and World Model runs
    (tests/helpers.py:small_world): for the controller and planning tests."""
    from .helpers import small_world

    return small_world(tmp_path_factory.mktemp("small-world"), ("flam", "genie", "world_model"))
