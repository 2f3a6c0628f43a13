"""Timing helpers shared by the bench scripts: wall and CPU seconds of one run, GPU-synchronised."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from typing import Any

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


def interleaved(
    runs: dict[str, Callable[[], dict[str, Any]]], repeats: int, unit: str, width: int = 12
) -> dict[str, list[dict[str, Any]]]:
    """Run every measure ``repeats`` times, rotating their order each round so load drift on a shared
    machine spreads over all of them; print each run; return the runs per measure."""
    measured: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            run = runs[name]()
            measured[name].append(run)
            print(
                f"  run {r + 1} {name:>{width}}: {run[unit]} {unit} in {run['seconds']:.3f}s "
                f"({run[unit] / run['seconds']:,.1f}/s, {run['cpu_seconds']:.2f} CPU s)",
                flush=True,
            )
    return measured
