"""Train the RL expert on a Procgen game: Phasic Policy Gradient (PPO with ``expert.algo=ppo``).

    python -m train.expert --config configs/bigfish.yaml                         # make expert DATASET=bigfish
    python -m train.expert --config configs/starpilot.yaml expert.total_steps=200000 expert.algo=ppo

The game is ``data.dataset``. Procgen's own batched env (``expert.num_envs`` games stepped in C++, 64x64
observations, easy mode, backgrounds off, every level unless ``expert.num_levels``) feeds an IMPALA CNN
actor-critic (``model/policy.py``); the update steps are in ``train/ppg.py``. One phase is ``expert.n_pi``
rollouts of ``num_envs x num_steps`` steps, each followed by a policy-phase update, then (PPG) the
auxiliary phase over the phase's data. GPU when present; a single process (the env is the batch).

Writes ``<run>/`` (default runs/expert-<game>/): config.yaml; ckpt/ with the whole state after every
``expert.ckpt_every`` phases (networks, optimiser, reward normaliser, episode counters, RNGs and every
env's own state, so a run killed and restarted continues exactly as if uninterrupted; ``latest`` is the
policy ingest and evaluation load); tb/ (episode return and length, steps/s, losses); curve.csv (env
steps, mean return of the last 100 episodes), rewritten at every checkpoint.
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ingest.procgen import PROCGEN_GAMES, make_batched_env
from model.policy import ActorCritic
from shards.config import diff, to_dict
from shards.writer import atomic_write_bytes
from train.common import Checkpoints
from train.config import Config, ExpertConfig, load_config, save_config
from train.policy_io import policy_header
from train.ppg import EpisodeStats, RewardNormalizer, UpdateSettings, aux_phase, gae, policy_phase
from train.visuals import TensorBoard

# Settings that may change when a run is resumed: how long it runs and how it is saved, not what it learns.
RESUMABLE_CHANGES = ("total_steps", "run_dir", "ckpt_every", "keep_last")


def update_settings(ec: ExpertConfig) -> UpdateSettings:
    ppg = ec.algo == "ppg"
    return UpdateSettings(
        clip=ec.clip,
        ent_coef=ec.ent_coef,
        vf_coef=ec.vf_coef,
        max_grad_norm=ec.max_grad_norm,
        num_minibatches=ec.num_minibatches,
        policy_epochs=ec.e_pi if ppg else ec.ppo_epochs,
        value_epochs=ec.e_v if ppg else ec.ppo_epochs,
        aux_epochs=ec.e_aux,
        beta_clone=ec.beta_clone,
    )


class ExpertTrainer:
    """The expert's whole training state and its two steps: ``collect`` a rollout, ``run_phase``."""

    def __init__(self, cfg: Config, device: torch.device) -> None:
        ec = cfg.expert
        game = cfg.data.dataset
        if game not in PROCGEN_GAMES:
            raise ValueError(
                f"the expert plays a Procgen game; data.dataset={game!r} is none "
                "(use a Procgen preset, e.g. configs/bigfish.yaml)"
            )
        self.cfg, self.ec, self.game, self.device = cfg, ec, game, device
        self.settings = update_settings(ec)
        self.env = make_batched_env(
            game,
            ec.num_envs,
            start_level=ec.start_level,
            num_levels=ec.num_levels,
            seed=ec.seed,
            distribution_mode=ec.distribution_mode,
        )
        self.num_actions = int(self.env.ac_space.eltype.n)
        torch.manual_seed(ec.seed)  # network init only; sampling and shuffles use the generators below
        self.agent = ActorCritic(ec.net, self.num_actions, "dual" if ec.algo == "ppg" else "shared").to(
            device
        )
        self.optimizer = torch.optim.Adam(self.agent.parameters(), lr=ec.lr, eps=1e-5)
        self.normalizer = RewardNormalizer(ec.num_envs, ec.gamma)
        self.episodes = EpisodeStats(ec.num_envs)
        self.recent: collections.deque[float] = collections.deque(maxlen=100)
        self.sampler = torch.Generator().manual_seed(ec.seed)  # action sampling (CPU)
        self.shuffler = np.random.default_rng([ec.seed, 1])  # minibatch orders
        self.phase, self.steps, self.episodes_done = 0, 0, 0
        self.curve: list[tuple[int, float | None, int]] = []  # (env steps, mean return of last 100, episodes)
        self._observe()
        self._aux: tuple[torch.Tensor, torch.Tensor] | None = None

    def _observe(self) -> None:
        _, obs, _ = self.env.observe()
        self.obs = obs["rgb"].copy()  # [N, 64, 64, 3]; gym3 may reuse its arrays

    # -- rollouts ----------------------------------------------------------------------------------

    @torch.no_grad()
    def collect(self) -> dict[str, torch.Tensor]:
        """One rollout of num_steps x num_envs; returns the flattened batch on the device (see
        ``policy_phase``) with GAE advantages and returns computed from the normalised rewards."""
        t_len, n = self.ec.num_steps, self.ec.num_envs
        obs = torch.empty((t_len, n, *self.obs.shape[1:]), dtype=torch.uint8)
        actions = torch.empty((t_len, n), dtype=torch.int64)
        logprobs, values, rewards = (torch.empty((t_len, n)) for _ in range(3))
        dones = torch.empty((t_len, n), dtype=torch.bool)
        for t in range(t_len):
            obs[t] = torch.from_numpy(self.obs)
            logits, value, _ = self.agent(obs[t].to(self.device))
            probs = torch.softmax(logits.float(), dim=-1).cpu()
            action = torch.multinomial(probs, 1, generator=self.sampler).squeeze(1)
            actions[t], values[t] = action, value.float().cpu()
            logprobs[t] = probs.gather(1, action[:, None]).squeeze(1).clamp_min(1e-12).log()
            self.env.act(action.numpy().astype(np.int32))
            rew, ob, first = self.env.observe()
            self.obs = ob["rgb"].copy()
            self.episodes.step(rew, first)
            rewards[t] = torch.from_numpy(self.normalizer(rew, first) if self.ec.reward_norm else rew)
            dones[t] = torch.from_numpy(first)
        last_value = self.agent.value(torch.from_numpy(self.obs).to(self.device)).float().cpu()
        advantages = gae(rewards, values, dones, last_value, self.ec.gamma, self.ec.gae_lambda)
        self.steps += t_len * n
        batch = {
            "obs": obs,
            "actions": actions,
            "logprobs": logprobs,
            "values": values,
            "advantages": advantages,
            "returns": advantages + values,
        }
        return {k: v.flatten(0, 1).to(self.device) for k, v in batch.items()}

    def run_phase(self, tb: TensorBoard, bar: tqdm) -> None:
        """n_pi rollouts with their policy-phase updates, then PPG's auxiliary phase."""
        per_rollout = self.ec.num_envs * self.ec.num_steps
        ppg = self.ec.algo == "ppg"
        if ppg and self._aux is None:  # reused every phase: 6.4 GB of uint8 at the paper's sizes
            self._aux = (
                torch.empty((self.ec.n_pi * per_rollout, *self.obs.shape[1:]), dtype=torch.uint8),
                torch.empty(self.ec.n_pi * per_rollout),
            )
        for i in range(self.ec.n_pi):
            clock = time.perf_counter()
            batch = self.collect()
            rollout_s = time.perf_counter() - clock
            metrics = policy_phase(self.agent, self.optimizer, batch, self.settings, self.shuffler)
            if ppg:
                span = slice(i * per_rollout, (i + 1) * per_rollout)
                self._aux[0][span], self._aux[1][span] = batch["obs"].cpu(), batch["returns"].cpu()
            returns, lengths = self.episodes.pop()
            self.recent.extend(returns)
            self.episodes_done += len(returns)
            scalars = {f"loss/{k}": v for k, v in metrics.items()}
            scalars["perf/steps_per_s"] = per_rollout / (time.perf_counter() - clock)
            scalars["perf/rollout_steps_per_s"] = per_rollout / rollout_s
            if returns:
                scalars["episode/return"] = float(np.mean(returns))
                scalars["episode/length"] = float(np.mean(lengths))
            if self.recent:
                scalars["episode/return_100"] = float(np.mean(self.recent))
            tb.scalars(scalars, self.steps)
            bar.update(per_rollout)
            bar.set_postfix(ret100=f"{scalars.get('episode/return_100', float('nan')):.2f}", refresh=False)
        if ppg:
            minibatch = per_rollout // self.ec.num_minibatches
            aux = aux_phase(
                self.agent, self.optimizer, *self._aux, self.settings, self.shuffler, self.device, minibatch
            )
            tb.scalars({f"aux/{k}": v for k, v in aux.items()}, self.steps)
        self.phase += 1
        mean_100 = float(np.mean(self.recent)) if self.recent else None  # None until an episode ends
        self.curve.append((self.steps, mean_100, self.episodes_done))

    # -- whole state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "expert",
            "policy": policy_header(
                "expert", self.agent, self.game, self.ec.distribution_mode, use_backgrounds=False
            ),
            "model": self.agent.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.steps,
            "phase": self.phase,
            "episodes_done": self.episodes_done,
            "normalizer": self.normalizer.state_dict(),
            "episodes": self.episodes.state_dict(),
            "recent": list(self.recent),
            "curve": list(self.curve),
            "sampler": self.sampler.get_state(),
            "shuffler": self.shuffler.bit_generator.state,
            "env_states": self.env.get_state(),  # every game's full state (level, entities, its RNG)
            "config": to_dict(self.cfg),
        }

    def load_state_dict(self, state: dict[str, Any], where: Path) -> None:
        changed = [
            line
            for line in diff(state["config"]["expert"], to_dict(self.ec))
            if line.split(":")[0] not in RESUMABLE_CHANGES
        ]
        if state["config"]["data"]["dataset"] != self.game:
            changed.append(f"data.dataset: {state['config']['data']['dataset']!r} -> {self.game!r}")
        if changed:
            raise ValueError(
                f"{where} was trained with another expert config:\n  "
                + "\n  ".join(changed)
                + "\nResume with "
                "the same settings (only total_steps may change), or start a new run (expert.run_dir=...)"
            )
        self.agent.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps, self.phase, self.episodes_done = state["step"], state["phase"], state["episodes_done"]
        self.normalizer.load_state_dict(state["normalizer"])
        self.episodes.load_state_dict(state["episodes"])
        self.recent.extend(state["recent"])
        self.curve = [tuple(c) for c in state["curve"]]
        self.sampler.set_state(state["sampler"])
        self.shuffler.bit_generator.state = state["shuffler"]
        self.env.set_state(state["env_states"])
        self._observe()


def write_curve(run_dir: Path, curve: list[tuple[int, float | None, int]]) -> None:
    rows = [f"{s},{'' if r is None else f'{r:.4f}'},{e}" for s, r, e in curve]
    lines = ["env_steps,return_100,episodes", *rows]
    atomic_write_bytes(run_dir / "curve.csv", ("\n".join(lines) + "\n").encode())


def main(cfg: Config) -> Path:
    ec = cfg.expert
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run_dir = cfg.expert_run_dir
    trainer = ExpertTrainer(cfg, device)
    ckpts = Checkpoints(run_dir, ec.keep_last)
    state = ckpts.load_latest(map_location=device)
    if state is not None:
        trainer.load_state_dict(state, ckpts.latest)
    save_config(cfg, run_dir / "config.yaml")
    phases = -(-ec.total_steps // ec.steps_per_phase)
    total = phases * ec.steps_per_phase
    tb = TensorBoard(run_dir / "tb")
    bar = tqdm(
        total=total, initial=trainer.steps, unit="step", unit_scale=True, desc=f"expert {trainer.game}"
    )
    while trainer.phase < phases:
        trainer.run_phase(tb, bar)
        if trainer.phase % ec.ckpt_every == 0 or trainer.phase == phases:
            ckpts.save(trainer.state_dict())
            write_curve(run_dir, trainer.curve)
    bar.close()
    tb.close()
    if trainer.curve:
        steps, ret, episodes = trainer.curve[-1]
        print(
            f"expert {trainer.game}: {steps} env steps, {episodes} episodes, mean return of last 100: {ret}"
        )
    return ckpts.latest


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a Procgen preset in configs/, e.g. configs/bigfish.yaml")
    p.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. expert.total_steps=1000000 expert.algo=ppo"
    )
    args = p.parse_args()
    main(load_config(args.config, args.overrides))
