"""Timing helpers shared by the bench scripts: wall and CPU seconds of one run, GPU-synchronised."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], int], device: torch.device, unit: str = "frames") -> dict[str, float]:
    """Wall seconds, CPU seconds (this process + children reaped meanwhile) and the count ``fn`` returns."""
    sync(device)
    before, cpu0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time(), time.perf_counter()
    count = fn()
    sync(device)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu += (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"seconds": wall, "cpu_seconds": cpu, unit: count}
