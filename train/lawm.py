"""LAWM-style latent action world model and offline RL in latent action space, end to end (``make lawm``).

    python -m train.lawm --config configs/bigfish.yaml --brief                      # CPU-sized
    python -m train.lawm --config configs/bigfish.yaml lawm.labelled_fraction=0.1   # one fraction, full size

Built from paper 004's abstract only (docs/lawm.md names every choice it leaves open). Stages, each skipped
or resumed when already done (same folders, same config):

1. expert: ``train/expert.py`` (PPG) unless ``lawm.expert`` names a checkpoint;
2. data: ``lawm.episodes`` episodes of the behaviour mix (``source.policy=mixed``: expert, epsilon-noisy
   expert, random, drawn per episode) on ``lawm.levels`` through the ordinary ingest, 64x64 frames, rewards;
3. tokenizer and token cache of that data (``train/tokenizer.py``, ``train/precompute.py``);
4. per labelled fraction and world model (``lawm.world_models``: FLAM per slot, AdaWorld monolithic): one
   LAWM world model on every training window, actions on the labelled episodes only (``train/lawm_fit.py``);
5. offline-RL transitions from the token cache (``train/lawm_data.py``): state = the world model's state
   of a frame, latent action = the encoder's latent of the real action on labelled episodes, the IDM's
   latent elsewhere; rewards and dones from the cache;
6. policies (``lawm.methods``, ``lawm.seeds`` each): IQL and latent BC on every transition; IQL and BC with
   real actions on the labelled transitions only (baselines, the same state and networks);
7. evaluation on ``lawm.eval_levels`` (never in the data): latent policies act through the encoder inverse
   (the real action whose encoded latent is nearest the policy's), real-action policies directly;
   ``return_vs_labels.md``, ``scores.json``, ``return_vs_labels.png`` and a video.

Writes runs/lawm-<game>[-brief]/.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ingest.procgen import PROCGEN_GAMES
from model.iql import IQLAgent
from shards.config import merge, parse_overrides, to_dict
from shards.tokens import TokenCache, cache_dir, file_id, manifest_sha256
from train import compare, expert, precompute, tokenizer
from train.common import load_tokenizer
from train.config import Config, brief_config, load_config
from train.iql import fit_iql
from train.lawm_config import LAWMConfig
from train.lawm_data import Transitions, clip_episodes, inverse_accuracy, labelled_episodes, transitions
from train.lawm_fit import NUM_ACTIONS, load_lawm, train_lawm
from train.lawm_report import fraction_label, write_report
from train.policy import BRIEF as POLICY_BRIEF
from train.policy import cached_returns
from train.policy_eval import Act, EnvSpec, film, network_policy, play, random_policy, summarise
from train.policy_io import load_policy

# The world model sees the agent's 64x64 view (lawm.resolution): a 3-stage tokenizer gives 8x8 tokens.
FULL: dict[str, Any] = {
    "tokenizer": {"image_size": 64, "channels": [64, 128, 128]},
}
# CPU-sized: on top of configs/brief.yaml; the expert is make policy's brief expert.
BRIEF: dict[str, Any] = {
    "data": {"root": "data/lawm-brief"},
    # Per-patch tokens (as the MultiGrid brief): bigfish's 64x64 frames are mostly black with small sprites,
    # and a small IMPALA tokenizer collapsed to one code for every token in 600 steps (measured).
    "tokenizer": {"arch": "patch", "patch_size": 8, "image_size": 64, "channels": [128, 128]},
    "tokenizer_train": {"steps": 1500, "lr": 3.0e-3, "image_every": 500, "ckpt_every": 500},
    "lam_train": {"steps": 300, "ckpt_every": 300, "latent_warmup_steps": 50},
    "expert": POLICY_BRIEF["expert"],
    "lawm": {
        "episodes": 48,
        "max_episode_len": 160,
        "labelled_fractions": [0.1, 1.0],
        "encoder": {"dim": 64},
        "iql": {"steps": 400, "batch_size": 128, "dim": 64, "lr": 1.0e-3},
        "seeds": 1,
        "eval_envs": 8,
        "eval_episodes": 8,
        "eval_max_steps": 300,
    },
}


def data_name(cfg: Config) -> str:
    return f"{cfg.data.dataset}_lawm"


def ingest_mix(cfg: Config, expert_ckpt: Path, brief: bool) -> Path:
    """The behaviour mix through the same ingest as every dataset (Ray Data, local)."""
    import ray

    from ingest.config import RunOptions, build_config
    from ingest.pipeline import print_summary, run_ingest

    lc = cfg.lawm
    source = {
        "policy": "mixed",
        "expert": str(expert_ckpt),
        "behaviour_mix": list(lc.behaviour_mix),
        "epsilon": lc.epsilon,
        "start_level": lc.levels[0],
        "num_levels": lc.levels[1],
        "max_episode_len": lc.max_episode_len,
        "resolution": lc.resolution,
    }
    top = {"dataset": data_name(cfg), "episodes": lc.episodes, "source": source}
    if brief:
        top["episodes_per_shard"] = 16
    icfg = build_config(cfg.data.dataset, top)
    manifest = run_ingest(icfg, RunOptions(out=cfg.data.root))
    print_summary(manifest, Path(cfg.data.root) / icfg.dataset)
    ray.shutdown()  # free the local Ray workers before training
    return Path(cfg.data.root) / icfg.dataset


def token_cache(cfg: Config, root: Path) -> tuple[Config, TokenCache]:
    """Tokenizer and token cache of the mix (train split), made now or found; the config pointing at them."""
    data_cfg = compare.with_runs(
        load_config(None, merge(to_dict(cfg), {"data": {"dataset": data_name(cfg)}})), root
    )
    tokenizer.main(data_cfg)
    precompute.main(data_cfg, data_cfg.tokenizer_checkpoint)
    tok_id = file_id(data_cfg.tokenizer_checkpoint)
    cache = TokenCache(cache_dir(data_cfg.data.root, data_cfg.data.dataset, tok_id, "train"))
    cache.check(tok_id, manifest_sha256(data_cfg.dataset_dir))
    cache.require("rewards")  # shards from before format version 2 have none: offline RL needs them
    check_codes_move(cache)
    return data_cfg, cache


def val_cache(data_cfg: Config, cache: TokenCache) -> TokenCache:
    """The val split of the same token cache (for the held-out encoder-inverse accuracy)."""
    val = TokenCache(cache.dir.parent / "val")
    val.check(cache.info.tokenizer_id, cache.info.manifest_sha256)
    return val


def check_codes_move(cache: TokenCache) -> float:
    """Share of tokens whose code changes from one frame to the next; refuse a cache where none does (a
    collapsed tokenizer: the world model and the latent actions would have nothing to learn)."""
    changed = total = 0
    for i in range(len(cache)):
        codes = np.asarray(cache.clip(i)["codes"])
        changed += int((codes[1:] != codes[:-1]).sum())
        total += codes[1:].size
    share = changed / max(total, 1)
    print(f"== token cache: {100 * share:.2f}% of tokens change code between consecutive frames", flush=True)
    if changed == 0:
        raise ValueError(
            f"no code of {cache.dir} ever changes between frames: the tokenizer encodes every frame alike "
            "(collapsed); train it longer or with other settings (tokenizer_train.*) and rerun"
        )
    return share


def latent_policy_act(lawm, agent: IQLAgent, tok, device: torch.device) -> Act:
    """The env's 64x64 view -> tokenizer codes -> the world model's state of that frame -> the policy's
    latent (mapped to the real action by the encoder inverse) or its real action; deterministic (mode)."""

    @torch.no_grad()
    def act(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        codes = tok.encode(torch.from_numpy(obs).to(device)[:, None])  # [n, 1, h, w]
        states = lawm.states(tok.codes_to_features(codes).flatten(2, 3))[:, 0]  # [n, K, D]
        out = agent.act(states)
        actions = lawm.encoder.invert(states, out) if agent.space == "latent" else out
        return actions.cpu().numpy()

    return act


def rl_data(data: Transitions, method: str) -> dict[str, np.ndarray]:
    """The arrays an agent of ``method`` trains on: latent rows use every transition, real rows only the
    labelled ones (their actions are the only real ones known)."""
    if method.endswith("_real"):
        data = data.subset(data.labelled)
        actions = data.actions
    else:
        actions = data.latents
    return {
        "states": data.states,
        "next_states": data.next_states,
        "actions": actions,
        "rewards": data.rewards,
        "dones": data.dones,
    }


class Scorer:
    """Trains a row's policies (one per seed) and scores them on unseen levels; finished scores are reused
    (``cached_returns``: same policy inputs, same scoring), so a rerun skips both training and playing."""

    def __init__(self, lc: LAWMConfig, root: Path, spec: EnvSpec, device: torch.device) -> None:
        self.lc, self.root, self.spec, self.device = lc, root, spec, device
        self.scoring = {"levels": list(lc.eval_levels), "envs": lc.eval_envs, "episodes": lc.eval_episodes}
        self.scoring["max_steps"] = lc.eval_max_steps
        self.best: tuple[float, str, float, Any, dict[str, np.ndarray]] | None = None

    def _returns(self, name: str, key: dict[str, Any], make_act: Callable[[], Act], seed: int) -> list[float]:
        lc = self.lc
        return cached_returns(
            self.root / "eval" / f"{name}-seed{seed}.json",
            {**key, "seed": seed, **self.scoring},
            lambda: play(
                make_act(), self.spec, lc.eval_envs, lc.eval_episodes, 1000 + seed, lc.eval_max_steps
            ),
        )

    def reference(self, name: str, policy_id: str, make_act: Callable[[], Act]) -> dict[str, Any]:
        return summarise([self._returns(name, {"row": policy_id}, make_act, s) for s in range(self.lc.seeds)])

    def _agent(self, method: str, arrays: dict[str, np.ndarray]) -> IQLAgent:
        space = "discrete" if method.endswith("_real") else "latent"
        size = NUM_ACTIONS if space == "discrete" else arrays["actions"].shape[-1]
        return IQLAgent(space, arrays["states"].shape[-1], size, self.lc.iql)

    def row(
        self, name: str, method: str, fraction: float, lawm, wm_id: str, arrays: dict[str, np.ndarray], tok
    ) -> dict[str, Any]:
        lc, label = self.lc, f"{name} {fraction_label(fraction)}"
        key = {"world_model": wm_id, "row": name, "iql": to_dict(lc.iql)}

        def make_act(seed: int) -> Act:
            agent = self._agent(method, arrays)
            print(f"== {label} seed {seed} ({len(arrays['rewards'])} transitions)", flush=True)
            fit_iql(agent, arrays, seed, self.device, bc=method.startswith("bc"), desc=label)
            return latent_policy_act(lawm, agent, tok, self.device)

        file = f"{name.replace('/', '-')}-{fraction_label(fraction)}"
        per_seed = [self._returns(file, key, lambda s=s: make_act(s), s) for s in range(lc.seeds)]
        summary = {**summarise(per_seed), "transitions": len(arrays["rewards"])}
        if method == "iql_latent" and (self.best is None or summary["mean"] >= self.best[0]):
            self.best = (summary["mean"], name, fraction, lawm, arrays)
        return summary

    def video(self, tok, steps: int = 200) -> str:
        """A GIF of the best latent IQL row's policy (refitted with seed 0) on an unseen level."""
        _, name, fraction, lawm, arrays = self.best
        agent = self._agent("iql_latent", arrays)
        fit_iql(agent, arrays, 0, self.device, desc=f"{name} video")
        path = self.root / "videos" / f"{name.replace('/', '-')}-{fraction_label(fraction)}.gif"
        video, reward = film(latent_policy_act(lawm, agent, tok, self.device), self.spec, 7, steps, path)
        return (
            f"Video: {video.relative_to(self.root)} ({name}, {fraction_label(fraction)} labelled, reward "
            f"{reward:.1f} in {steps} steps on an unseen level)."
        )


def inverse_table(inverse: dict[str, dict[str, float]]) -> str:
    """Held-out encoder-inverse accuracy per world model and fraction, as Markdown."""
    lines = [
        "Shared latent space, held out (val split): the encoder inverse applied to the IDM's latents "
        "recovers the action taken this often (next to it: a constant guess of the most frequent action).",
        "",
        "| world model | labelled | accuracy | most frequent action | transitions |",
        "|---|---|---|---|---|",
    ]
    for key, v in inverse.items():
        wm, fraction = key.split("/")
        lines.append(
            f"| {wm} | {fraction_label(float(fraction))} | {v['accuracy']:.3f} | {v['majority']:.3f} | "
            f"{v['transitions']} |"
        )
    return "\n".join(lines)


def main(config: str | Path, overrides: list[str], brief: bool) -> Path:
    start, clock = time.perf_counter(), {}
    cfg = load_config(config)
    if cfg.data.dataset not in PROCGEN_GAMES:
        raise ValueError(f"make lawm plays a Procgen game; {config} is {cfg.data.dataset!r}")
    cfg = load_config(None, merge(to_dict(brief_config(cfg) if brief else cfg), BRIEF if brief else FULL))
    if brief and not torch.cuda.is_available():
        torch.set_num_threads(1)  # small models on a shared CPU: one thread (see train/policy.py)
    cfg = load_config(None, merge(to_dict(cfg), parse_overrides(overrides)))
    lc, game = cfg.lawm, cfg.data.dataset
    root = Path(lc.run_dir or f"runs/lawm-{game}{'-brief' if brief else ''}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def stage(name: str) -> None:
        clock[name] = round(time.perf_counter() - start - sum(clock.values()), 1)
        print(f"== {name} done ({clock[name]:.0f}s)", flush=True)

    # 1-3. expert, behaviour mix, tokens
    if lc.expert:
        expert_ckpt = Path(lc.expert)
    else:
        if brief:
            cfg = replace(cfg, expert=replace(cfg.expert, run_dir=str(root / "expert")))
        print(f"== expert ({cfg.expert.algo}, {cfg.expert.total_steps} env steps)", flush=True)
        expert_ckpt = expert.main(cfg)
    expert_policy = load_policy(expert_ckpt, device)
    expert_policy.check_env(game, "easy", False, NUM_ACTIONS)
    stage("expert")
    ingest_mix(cfg, expert_ckpt, brief)
    stage("data")
    data_cfg, cache = token_cache(cfg, root)
    val = val_cache(data_cfg, cache)
    tok, _ = load_tokenizer(data_cfg.tokenizer_checkpoint, device)
    stage("tokens")

    # 4-7. per labelled fraction: world models, transitions, policies, evaluation
    scorer = Scorer(lc, root, EnvSpec(game, tuple(lc.eval_levels)), device)
    episodes = clip_episodes(cache)[:, 0]
    result: dict[str, Any] = {"fractions": {}, "labelled_episodes": {}, "world_models": {}, "inverse": {}}
    for fraction in sorted(lc.fractions):
        labelled = labelled_episodes(episodes, fraction, lc.label_seed)
        flabel = fraction_label(fraction)
        result["labelled_episodes"][str(fraction)] = [len(labelled), len(np.unique(episodes))]
        rows: dict[str, Any] = {}
        for wm_index, wm in enumerate(lc.world_models):
            print(f"== {wm} LAWM, {flabel} labelled ({len(labelled)} episodes)", flush=True)
            run_dir = root / "world_models" / f"{wm}-{flabel}"
            ckpt = train_lawm(data_cfg, wm, cache, labelled, run_dir, tok, device)
            lawm, state = load_lawm(ckpt, device)
            result["world_models"][f"{wm}/{fraction}"] = {
                "checkpoint": str(ckpt),
                "metrics": state["metrics"],
            }
            data = transitions(lawm, cache, labelled, tok, device)
            inverse = inverse_accuracy(lawm, transitions(lawm, val, np.zeros(0, np.int64), tok, device))
            result["inverse"][f"{wm}/{fraction}"] = inverse
            for method in lc.methods:
                if (
                    method.endswith("_real") and wm_index
                ):  # real-action rows once, on the first model's states
                    continue
                name = f"{method}/{wm}" if method.endswith("_latent") else method
                rows[name] = scorer.row(
                    name, method, fraction, lawm, file_id(ckpt), rl_data(data, method), tok
                )
        result["fractions"][str(fraction)] = rows
    expert_act = network_policy(expert_policy, device)
    result["random"] = scorer.reference("random", "random", lambda: random_policy(NUM_ACTIONS))
    result["expert"] = scorer.reference("expert", expert_policy.id, lambda: expert_act)
    stage("world models + policies + evaluation")

    notes = [inverse_table(result["inverse"]), "", f"Stage times (s): {json.dumps(clock)}."]
    if scorer.best is not None:
        notes.insert(0, scorer.video(tok))
    result["timings_s"] = clock
    result["data"] = {"dataset": data_name(cfg), "episodes": lc.episodes, "levels": list(lc.levels)}
    notes.append(
        f"Data: {lc.episodes} episodes of the behaviour mix {list(lc.behaviour_mix)} (expert, "
        f"epsilon={lc.epsilon} noisy expert, random) on levels {list(lc.levels)}; scored on "
        f"{list(lc.eval_levels)} ({lc.seeds} seeds x {lc.eval_episodes} episodes per row)."
    )
    title = f"LAWM-style return vs labelled fraction, {game} (unseen levels, mean ± s.e.)"
    report = write_report(result, root, title, notes)
    print("\n" + report.read_text())
    print(f"lawm {game}: {time.perf_counter() - start:.0f}s; table: {report}")
    return report


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--config", required=True, help="a Procgen preset in configs/ (bigfish, leaper, starpilot)"
    )
    p.add_argument("--brief", action="store_true", help="CPU-sized: short expert, small data and models")
    p.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. lawm.labelled_fraction=0.1 lawm.seeds=5"
    )
    args = p.parse_args()
    main(args.config, args.overrides, args.brief)
