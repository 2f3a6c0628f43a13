"""Expert env-steps/s against the bare batched Procgen env stepping random actions, measured in the same run.

    python -m bench.expert                                   # CPU: starpilot, paper-size network, ~5 min
    python -m bench.expert --device cuda --num-steps 256 --rollouts 8 --threads 0

Setup: the preset's expert (configs/<game>.yaml ``expert.*``: IMPALA CNN 16-32-32 -> 256, PPG with dual
networks, E_aux 6) with ``--num-envs`` games and ``--num-steps`` steps per rollout; the phase is cut to
``--rollouts`` rollouts (N_pi), which keeps every per-step cost of the full phase (one policy-phase
epoch per rollout, E_aux auxiliary epochs over every sample) at a benchmark's length. Measures env
steps/s of:
  bare     Procgen's batched env (same game and env count) stepping uniformly random actions drawn by
           numpy: the ceiling of any agent on this env
  rollout  ExpertTrainer.collect: policy + value forward, sampling, env step, reward normalisation,
           buffers and GAE (what acting costs)
  expert   ExpertTrainer.run_phase: the rollouts with their policy-phase updates and the auxiliary phase,
           i.e. what training costs per env step
Headline: expert / bare (DESIGN target >= 0.5 on CPU; GPU: record). Also rollout / bare and the share of
the rollout spent inside env.act/observe. Each measure runs ``--repeats`` times, interleaved, medians
reported with CPU seconds (steadier than wall time on a shared machine). On CPU torch runs ``--threads``
1 by default (with more threads than free cores the intra-op threads spin-wait). Writes bench/out/expert.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bench.timing import interleaved, timed
from ingest.procgen import make_batched_env
from train.config import load_config
from train.expert import ExpertTrainer
from train.visuals import TensorBoard


def bare_steps(game: str, num_envs: int, steps: int) -> int:
    env = make_batched_env(game, num_envs, seed=1)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        env.act(rng.integers(0, 15, num_envs).astype(np.int32))
        env.observe()
    env.close()
    return steps * num_envs


class EnvClock:
    """Wraps a batched env and adds up the seconds spent in act + observe."""

    def __init__(self, env) -> None:
        self.env, self.seconds = env, 0.0

    def act(self, actions) -> None:
        t = time.perf_counter()
        self.env.act(actions)
        self.seconds += time.perf_counter() - t

    def observe(self):
        t = time.perf_counter()
        out = self.env.observe()
        self.seconds += time.perf_counter() - t
        return out

    def __getattr__(self, name):
        return getattr(self.env, name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/starpilot.yaml")
    p.add_argument("--num-envs", type=int, default=64)
    p.add_argument("--num-steps", type=int, default=64)
    p.add_argument("--rollouts", type=int, default=2, help="rollouts per phase (N_pi) in the measured phase")
    p.add_argument("--algo", default="ppg", choices=("ppg", "ppo"))
    p.add_argument("--repeats", type=int, default=1, help="interleaved repeats")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_config(
        args.config,
        [
            f"expert.num_envs={args.num_envs}",
            f"expert.num_steps={args.num_steps}",
            f"expert.n_pi={args.rollouts}",
            f"expert.algo={args.algo}",
            "expert.run_dir=/nonexistent",  # nothing is saved
        ],
    )
    game, per_rollout = cfg.data.dataset, args.num_envs * args.num_steps
    trainer = ExpertTrainer(cfg, device)
    trainer.env = EnvClock(trainer.env)
    trainer.collect()  # warm-up: first-call allocations, oneDNN primitive choice
    tb, quiet = TensorBoard("", enabled=False), tqdm(disable=True)
    env_share: list[float] = []

    def rollout() -> int:
        trainer.env.seconds = 0.0
        t = time.perf_counter()
        for _ in range(args.rollouts):
            trainer.collect()
        env_share.append(trainer.env.seconds / (time.perf_counter() - t))
        return args.rollouts * per_rollout

    runs = {
        "bare": lambda: timed(
            lambda: bare_steps(game, args.num_envs, args.rollouts * args.num_steps), device, "steps"
        ),
        "rollout": lambda: timed(rollout, device, "steps"),
        "expert": lambda: timed(
            lambda: (trainer.run_phase(tb, quiet), args.rollouts * per_rollout)[1], device, "steps"
        ),
    }
    print(
        f"{game}: {args.num_envs} envs x {args.num_steps} steps x {args.rollouts} rollouts, {args.algo}, "
        f"IMPALA {list(cfg.expert.net.channels)} -> {cfg.expert.net.hidden}, device {device}, threads "
        f"{torch.get_num_threads()}",
        flush=True,
    )
    measured = interleaved(runs, args.repeats, "steps", width=8)
    rate = {k: statistics.median(r["steps"] / r["seconds"] for r in v) for k, v in measured.items()}
    cpu_rate = {k: statistics.median(r["steps"] / r["cpu_seconds"] for r in v) for k, v in measured.items()}
    result = {
        "game": game,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "num_envs": args.num_envs,
        "num_steps": args.num_steps,
        "rollouts": args.rollouts,
        "algo": args.algo,
        "steps_per_s": rate,
        "steps_per_cpu_s": cpu_rate,
        "expert_over_bare": rate["expert"] / rate["bare"],
        "rollout_over_bare": rate["rollout"] / rate["bare"],
        "env_share_of_rollout": statistics.median(env_share),
        "runs": measured,
    }
    print("  steps/s (median): " + ", ".join(f"{k} {v:,.0f}" for k, v in rate.items()))
    print(
        f"  expert / bare = {result['expert_over_bare']:.4f}   "
        f"rollout / bare = {result['rollout_over_bare']:.4f}"
    )
    print(f"  env.act + observe: {result['env_share_of_rollout']:.1%} of the rollout's wall time")
    out = Path(__file__).parent / "out" / "expert.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
