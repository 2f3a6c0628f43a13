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
def python_cmd() -> list[str]:
    """Interpreter of this test session, for subprocess runs of our entry points."""
    return [sys.executable]
