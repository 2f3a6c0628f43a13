"""Planning steps/s against a bare batched forward of the same world model on the same candidates.

    python -m bench.plan                                   # CPU: brief-size models (width 64, 8x8 tokens)
    python -m bench.plan --device cuda --dim 256 --tokens 256 --repeats 5

One planning step of ``train/plan.py`` (``train/planner.py``): observe (slot-agent matching on the
context for a factored model), then search: exhaustive over 4^H sequences (H = 4: 256 candidates) or
categorical CEM (H = 8, 128 samples x 3 rounds), each round one batched rollout of every candidate driven
by the controller (an adapter as wide and deep as the model, reading the state at every step; the World
Model: action tokens), snapped to the FSQ grid, and the feature-space cost. The baseline is the bare
batched forward: ``model.rollout`` of the same number of candidates and steps from the same context with
precomputed latent actions (for CEM, as many rollouts as rounds). Ratio = planning steps/s / bare
forwards/s (DESIGN target >= 0.8): what the planner adds on top of the world model's own forward
(controller, matching, cost, search).

Randomly initialised models (speed does not depend on the weights). Each measure runs ``--repeats`` times
after a warm-up, interleaved (order rotated); medians are reported, with CPU seconds. Writes
bench/out/plan.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch

from bench.timing import interleaved, timed
from model.config import LAMConfig
from model.controller import Controller
from model.fsq import FSQ
from model.zoo import build_model
from train.controller import BoundController
from train.planner import (
    ModelImagination,
    Observation,
    SearchSettings,
    controller_steer,
    search,
    world_model_steer,
)

ACTIONS, NOOP, AGENTS = [0, 1, 2, 6], 6, 4


def imagination(name: str, args, device) -> tuple[ModelImagination, object]:
    side = int(args.tokens**0.5)
    cfg = LAMConfig(
        dim=args.dim,
        num_heads=4,
        depth=args.depth,
        num_slots=4,
        slot_iters=2,
        max_frames=8,
        num_tokens=args.tokens,
        feature_dim=5,
        num_actions=7,
        num_actors=AGENTS,
    )
    model = build_model(name, cfg).to(device).eval().requires_grad_(False)
    fsq = FSQ([4] * 5).to(device)
    if name == "world_model":
        steer = world_model_steer(model)
    else:
        per_agent = model.factored
        spec = {
            "per_agent": per_agent,
            "num_actions": 7,
            "actors": 1 if per_agent else AGENTS,
            "latents": 4 if model.factored else 1,
            "latent_dim": model.action_dim,
            "out_dim": model.action_dim,
            "state_dim": args.dim,
        }
        net = Controller(
            "adapter", spec["actors"] * 7, spec["out_dim"], args.dim, width=args.dim, depth=args.depth
        )
        steer = controller_steer(BoundController(net.to(device).eval(), model, spec))
    return ModelImagination(model, fsq, steer, ACTIONS, NOOP, cells=(8, 8), tokens=(side, side)), model


def observation(args, device) -> Observation:
    gen = torch.Generator().manual_seed(0)
    fsq = FSQ([4] * 5)
    frames = fsq.indices_to_codes(torch.randint(0, 1024, (args.context + 1, args.tokens), generator=gen))
    positions = np.array([[1, 1], [3, 2], [5, 4], [6, 6]])
    directions = np.zeros(AGENTS, dtype=np.int64)
    return Observation(
        frames[:-1].to(device), positions, directions, frames[-1].to(device), positions, directions
    )


def measures(name: str, args, device) -> dict:
    imag, model = imagination(name, args, device)
    obs = observation(args, device)
    settings = {
        "exhaustive": (4, SearchSettings(max_exhaustive=256)),
        "cem": (8, SearchSettings(max_exhaustive=256, samples=128, iters=3, elites=16)),
    }
    fsq = imag.fsq
    runs = {}
    for method, (horizon, s) in settings.items():
        count = 4**horizon if method == "exhaustive" else s.samples
        rounds = 1 if method == "exhaustive" else s.iters
        hist = obs.history[None].expand(count, -1, -1, -1)
        k = 4 if model.factored else 1
        latents = torch.randn(count, horizon, k, model.action_dim, device=device)
        if name == "world_model":
            latents = model.sample_prior_actions(count, horizon, device=device)

        def plan_step(horizon=horizon, s=s):
            with torch.no_grad():
                imag.observe(obs)
                search(imag.costs, len(ACTIONS), horizon, s, torch.Generator().manual_seed(0))
            return 1

        def bare(hist=hist, latents=latents, rounds=rounds):
            with torch.no_grad():
                for _ in range(rounds):
                    model.rollout(hist, latents, snap=fsq.snap)
            return 1

        plan_step(), bare()  # warm-up
        runs[f"{method} plan"] = lambda f=plan_step: timed(f, device, "steps")
        runs[f"{method} bare"] = lambda f=bare: timed(f, device, "steps")
    measured = interleaved(runs, args.repeats, "steps", width=16)
    out = {}
    for method in settings:
        plan_s = statistics.median(r["seconds"] for r in measured[f"{method} plan"])
        bare_s = statistics.median(r["seconds"] for r in measured[f"{method} bare"])
        plan_cpu = statistics.median(r["cpu_seconds"] for r in measured[f"{method} plan"])
        bare_cpu = statistics.median(r["cpu_seconds"] for r in measured[f"{method} bare"])
        out[method] = {
            "plan_steps_per_s": 1 / plan_s,
            "bare_forwards_per_s": 1 / bare_s,
            "ratio": bare_s / plan_s,
            "ratio_cpu_time": bare_cpu / max(plan_cpu, 1e-9),
        }
        speeds = f"plan {1 / plan_s:.2f} steps/s, bare {1 / bare_s:.2f}/s"
        print(f"{name:>12} {method:>10}: {speeds}, ratio {bare_s / plan_s:.2f}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["flam", "adaworld", "world_model"])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=1)
    p.add_argument("--tokens", type=int, default=64, help="N tokens per frame (a square grid)")
    p.add_argument("--context", type=int, default=2, help="real frames before the rollout")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU (0: torch's default)")
    p.add_argument("--json", type=Path, default=Path("bench/out/plan.json"))
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    results = {"args": {k: str(v) for k, v in vars(args).items()}, "device": str(device)}
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
    for name in args.models:
        results[name] = measures(name, args, device)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
