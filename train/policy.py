"""Policy learning from latent actions, end to end (``make policy``): the paper's section 5.3 and Table 4.

    python -m train.policy --config configs/starpilot.yaml --brief        # CPU-sized, minutes
    python -m train.policy --config configs/bigfish.yaml                  # full size (GPU): docs/results.md
    python -m train.policy --config configs/bigfish.yaml policy.expert=runs/expert-bigfish/ckpt/latest

Stages, each skipped or resumed when already done (same folders, same config):

1. expert: ``train/expert.py`` (PPG) unless ``policy.expert`` names a checkpoint;
2. demos: the expert plays ``policy.demo_episodes`` episodes on ``policy.demo_levels`` through the ordinary
   ingest (``source.policy=<checkpoint>``) into ``<data.root>/<game>_demos`` (224x224 frames for the world
   models, the 64x64 views for the policies, rewards);
3. world models: tokenizer, token cache and every ``policy.world_models`` model trained on the demo videos
   (no actions), as ``train/compare.py`` does;
4. pseudo-labels: per world model and label budget, an action decoder on the labelled subset's latents
   labels every demo frame; a supervised IDM per budget does the same from pixels; all stored beside the
   token cache, keyed to the labeller's checkpoint, with their accuracy on held-out (val) frames;
5. behaviour cloning: one policy per row, budget and seed (``train/bc.py``);
6. evaluation on ``policy.eval_levels`` (never in a demo): BC rows, random and expert, mean ± s.e.;
   ``table4.md``, ``scores.json``, ``return_vs_labels.png`` and a video of a BC policy playing.

``--brief`` shrinks every stage (a short expert run, 64 demo episodes at 64x64, small world models, short
fits) so the same code runs on 2 CPU cores in well under 30 minutes; its numbers show the pipeline works,
not the paper's result. Writes runs/policy-<game>[-brief]/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ingest.procgen import PROCGEN_GAMES
from model.tokenizer import Tokenizer
from shards.config import merge, parse_overrides, to_dict
from shards.manifest import load_manifest
from shards.policy_data import (
    PseudoLabels,
    build_policy_obs,
    cache_rows,
    labels_dir,
    load_policy_obs,
    write_labels,
)
from shards.tokens import TokenCache, cache_dir, file_id, manifest_sha256
from train import compare, expert, lam, precompute, tokenizer
from train.bc import bc_targets, train_bc
from train.common import load_checkpoint, load_tokenizer
from train.config import Config, load_config, save_config
from train.policy_eval import EnvSpec, film, network_policy, play, random_policy, summarise
from train.policy_io import load_policy
from train.pseudo_labels import (
    label_name,
    label_with_idm,
    label_with_world_model,
    labelled_rows,
    settings_tag,
)
from train.table4 import budget_label, write_report

# CPU-sized: every stage shrunk, the code path unchanged. On top of compare.BRIEF's world-model sizes.
BRIEF: dict[str, Any] = {
    "data": {"root": "data/policy-brief"},
    # 64x64 demo frames (not 224): the tokenizer and the three world models then fit the time budget.
    "tokenizer": {"image_size": 64, "channels": [16, 32, 32], "num_res_blocks": 1},
    "tokenizer_train": {"steps": 600, "image_every": 300, "ckpt_every": 300},
    "lam_train": {"steps": 300, "val_every": 300, "ckpt_every": 300},
    "expert": {
        "total_steps": 16384,
        "num_envs": 16,
        "num_steps": 128,
        "n_pi": 4,
        "e_aux": 1,
        "num_minibatches": 4,
        "net": {"channels": [8, 16, 16], "hidden": 128},
    },
    "policy": {
        "demo_episodes": 64,
        "demo_max_episode_len": 200,
        "demo_resolution": 64,
        "label_budgets": [200, 1000],
        "decoder": {"dim": 64},
        "decoder_fit": {"steps": 300, "batch_size": 128},
        "idm_fit": {"steps": 400, "batch_size": 64, "lr": 1.0e-3},
        "bc_fit": {"steps": 300, "batch_size": 64, "lr": 1.0e-3},
        "net": {"channels": [8, 16, 16], "hidden": 128},
        "seeds": 1,
        "eval_envs": 16,
        "eval_episodes": 16,
        "eval_max_steps": 500,
        "video_steps": 200,
    },
}


def brief_config(cfg: Config) -> Config:
    return load_config(None, merge(merge(to_dict(cfg), compare.BRIEF), BRIEF))


def demo_name(cfg: Config) -> str:
    return f"{cfg.data.dataset}_demos"


def ingest_demos(cfg: Config, expert_ckpt: Path) -> Path:
    """The expert's demonstrations, through the same ingest as every dataset (Ray Data, local)."""
    import ray

    from ingest.config import RunOptions, build_config
    from ingest.pipeline import print_summary, run_ingest

    pc = cfg.policy
    source = {
        "policy": str(expert_ckpt),
        "start_level": pc.demo_levels[0],
        "num_levels": pc.demo_levels[1],
        "max_episode_len": pc.demo_max_episode_len,
        "resolution": pc.demo_resolution,
    }
    icfg = build_config(
        cfg.data.dataset, {"dataset": demo_name(cfg), "episodes": pc.demo_episodes, "source": source}
    )
    manifest = run_ingest(icfg, RunOptions(out=cfg.data.root))
    print_summary(manifest, Path(cfg.data.root) / icfg.dataset)
    ray.shutdown()  # free the local Ray workers before training
    return Path(cfg.data.root) / icfg.dataset


def check_unseen(demo_dir: Path, eval_levels: tuple[int, ...]) -> None:
    """Refuse to score on levels the demos (and so the BC policies) saw."""
    source = load_manifest(demo_dir)["config"]["source"]
    start, count = source.get("start_level", 0), source.get("num_levels", 0)
    b, m = eval_levels
    if count == 0 or (start < b + m and b < start + count):
        shown = "every level" if count == 0 else f"levels [{start}, {start + count})"
        raise ValueError(
            f"the demos in {demo_dir} show {shown}, and BC is scored on [{b}, {b + m}): re-ingest the demos "
            "on a disjoint range (source.start_level / source.num_levels) or move policy.eval_levels"
        )


def train_world_models(cfg: Config, root: Path, nproc: int) -> tuple[Config, dict[str, Path]]:
    """Tokenizer, token cache and each world model on the demo videos (train/compare.py's stages)."""
    demo_cfg = compare.with_runs(
        load_config(None, merge(to_dict(cfg), {"data": {"dataset": demo_name(cfg)}})), root
    )
    if nproc > 1:
        path = root / "tokenizer-config.yaml"
        save_config(demo_cfg, path)
        subprocess.run(compare.launch("train.tokenizer", path, nproc, []), check=True)
        subprocess.run(compare.launch("train.precompute", path, nproc, []), check=True)
    else:
        tokenizer.main(demo_cfg)
        precompute.main(demo_cfg)
    runs = {}
    for model in cfg.policy.world_models:
        print(f"== world model {model}", flush=True)
        run_cfg = compare.with_runs(demo_cfg, root, model)
        if nproc > 1:
            path = root / f"{model}-config.yaml"
            save_config(run_cfg, path)
            subprocess.run(compare.launch("train.lam", path, nproc, []), check=True)
        else:
            lam.main(run_cfg)
        runs[model] = run_cfg.lam_run_dir / "ckpt" / "latest"
    return demo_cfg, runs


def open_cache(demo_cfg: Config, split: str) -> TokenCache:
    tok_id = file_id(demo_cfg.tokenizer_checkpoint)
    cache = TokenCache(cache_dir(demo_cfg.data.root, demo_cfg.data.dataset, tok_id, split))
    cache.check(tok_id, manifest_sha256(demo_cfg.dataset_dir))
    build_policy_obs(cache, demo_cfg.dataset_dir)
    return cache


def pseudo_labels(
    cfg: Config,
    root: Path,
    world_models: dict[str, Path],
    tokenizer: Tokenizer,
    train: TokenCache,
    val: TokenCache,
    device,
) -> dict[tuple[str, int], PseudoLabels]:
    """Every labeller's labels of the train frames per budget, made now or found (and checked) on disk."""
    pc, out = cfg.policy, {}
    num_actions = 15  # every Procgen game has the same 15 key combos
    decoder_tag, idm_tag = settings_tag(pc.decoder, pc.decoder_fit), settings_tag(pc.net, pc.idm_fit)
    for model, ckpt in world_models.items():
        wm_id = file_id(ckpt)
        names = {b: label_name(b, pc.label_seed, decoder_tag) for b in pc.label_budgets}
        todo = tuple(
            b for b in pc.label_budgets if not (labels_dir(train, wm_id, names[b]) / "info.json").exists()
        )
        if todo:
            print(f"== pseudo-labels {model}: budgets {list(todo)}", flush=True)
            for labels, info in label_with_world_model(
                ckpt,
                tokenizer,
                train,
                val,
                todo,
                pc.label_seed,
                num_actions,
                pc.decoder,
                pc.decoder_fit,
                device,
                decoder_tag,
            ):
                write_labels(train, labels, info)
        for b in pc.label_budgets:
            found = PseudoLabels(labels_dir(train, wm_id, names[b]))
            found.check(wm_id, train)  # refuses labels of another world model or another cache
            out[(model, b)] = found
    obs, val_obs = load_policy_obs(train), load_policy_obs(val)
    for b in pc.label_budgets:
        idm_dir = root / "idm" / f"budget{budget_label(b)}-{idm_tag}"
        latest = idm_dir / "ckpt" / "latest"
        name = label_name(b, pc.label_seed, idm_tag)
        if not (latest.exists() and (labels_dir(train, file_id(latest), name) / "info.json").exists()):
            print(f"== supervised IDM, budget {b}", flush=True)
            labels, info = label_with_idm(
                obs,
                train,
                val_obs,
                val,
                b,
                pc.label_seed,
                num_actions,
                pc.net,
                pc.idm_fit,
                idm_dir,
                device,
                idm_tag,
            )
            write_labels(train, labels, info)
        found = PseudoLabels(labels_dir(train, file_id(latest), name))
        found.check(file_id(latest), train)
        out[("idm", b)] = found
    return out


def cached_returns(path: Path, key: dict[str, Any], run) -> list[float]:
    """Episode returns of one evaluation, reused when the same policy was scored the same way before."""
    if path.exists():
        saved = json.loads(path.read_text())
        if saved["key"] == key:
            return saved["returns"]
    returns = run()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "returns": returns}))
    return returns


def main(config: str | Path, overrides: list[str], brief: bool, nproc: int = 1) -> Path:
    start, clock = time.perf_counter(), {}
    cfg = load_config(config)
    if cfg.data.dataset not in PROCGEN_GAMES:
        raise ValueError(f"policy learning plays a Procgen game; {config} is {cfg.data.dataset!r}")
    if brief:
        cfg = brief_config(cfg)
        if not torch.cuda.is_available():
            # Small models on a small (often shared) CPU: intra-op threads that find no free core spin-wait;
            # a BC step took 15x longer with 2 threads than with 1 on a loaded 2-core machine (measured).
            torch.set_num_threads(1)
    cfg = load_config(None, merge(to_dict(cfg), parse_overrides(overrides)))
    pc, game = cfg.policy, cfg.data.dataset
    root = Path(pc.run_dir or f"runs/policy-{game}{'-brief' if brief else ''}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def stage(name: str) -> None:
        clock[name] = round(time.perf_counter() - start - sum(clock.values()), 1)
        print(f"== {name} done ({clock[name]:.0f}s)", flush=True)

    # 1. expert
    if pc.expert:
        expert_ckpt = Path(pc.expert)
    else:
        if brief:
            cfg = replace(cfg, expert=replace(cfg.expert, run_dir=str(root / "expert")))
        print(f"== expert ({cfg.expert.algo}, {cfg.expert.total_steps} env steps)", flush=True)
        expert_ckpt = expert.main(cfg)
    expert_policy = load_policy(expert_ckpt, device)
    expert_policy.check_env(game, "easy", False, 15)
    stage("expert")

    # 2. demos
    print(f"== demos: {pc.demo_episodes} episodes on levels {list(pc.demo_levels)}", flush=True)
    demo_dir = ingest_demos(cfg, expert_ckpt)
    check_unseen(demo_dir, pc.eval_levels)
    stage("demos")

    # 3. world models on the demo videos
    demo_cfg, world_models = train_world_models(cfg, root, nproc)
    stage("world models")

    # 4. pseudo-labels
    train, val = open_cache(demo_cfg, "train"), open_cache(demo_cfg, "val")
    tok, _ = load_tokenizer(demo_cfg.tokenizer_checkpoint, device)  # the caches' codes -> features
    labels = pseudo_labels(cfg, root, world_models, tok, train, val, device)
    stage("pseudo-labels")

    # 5-6. behaviour cloning and evaluation on unseen levels
    obs, actions = load_policy_obs(train), cache_rows(train, "actions")
    spec = EnvSpec(game, tuple(pc.eval_levels))
    env = {"game": game, "distribution_mode": "easy", "use_backgrounds": False}
    scoring = {"levels": list(pc.eval_levels), "envs": pc.eval_envs, "episodes": pc.eval_episodes}
    scoring["max_steps"] = pc.eval_max_steps

    def score(name: str, policy_id: str, act) -> dict[str, Any]:
        per_seed = [
            cached_returns(
                root / "eval" / f"{name}-seed{s}.json",
                {"policy": policy_id, "seed": s, **scoring},
                lambda s=s: play(act, spec, pc.eval_envs, pc.eval_episodes, 1000 + s, pc.eval_max_steps),
            )
            for s in range(pc.seeds)
        ]
        return summarise(per_seed)

    methods = [*world_models, "idm", "vanilla_bc"]
    result: dict[str, Any] = {"budgets": {}, "label_accuracy": {}, "label_info": {}}
    bc_ckpts: dict[tuple[str, int], Path] = {}
    for budget in pc.label_budgets:
        labelled = labelled_rows(train, budget, pc.label_seed)
        row, accuracy = {}, {}
        for method in methods:
            found = None if method == "vanilla_bc" else labels[(method, budget)]
            rows, targets = bc_targets(actions, labelled, None if found is None else found.labels)
            per_seed = []
            for s in range(pc.seeds):
                tag = f"{method}-{budget_label(budget)}-seed{s}"
                inputs = {"method": method, "budget": budget, "label_seed": pc.label_seed}
                inputs["labeller_id"] = found.info.labeller_id if found else None
                print(f"== behaviour cloning {tag} ({len(rows)} frames)", flush=True)
                ckpt = train_bc(
                    obs, rows, targets, pc.net, 15, pc.bc_fit, s, root / "bc" / tag, env, inputs, device
                )
                bc_ckpts[(method, budget)] = bc_ckpts.get((method, budget), ckpt)
                policy = load_policy(ckpt, device)
                per_seed.append(
                    cached_returns(
                        root / "eval" / f"{tag}.json",
                        {"policy": policy.id, "seed": s, **scoring},
                        lambda p=policy, s=s: play(
                            network_policy(p, device),
                            spec,
                            pc.eval_envs,
                            pc.eval_episodes,
                            1000 + s,
                            pc.eval_max_steps,
                        ),
                    )
                )
            row[method] = {**summarise(per_seed), "frames": len(rows)}
            if found is not None:
                accuracy[method] = found.info.accuracy
                result["label_info"][f"{method}-{budget}"] = {
                    "labeller_id": found.info.labeller_id,
                    "accuracy_frames": found.info.accuracy_frames,
                    "labelled_rows": found.info.labelled_rows,
                }
        result["budgets"][str(budget)] = row
        result["label_accuracy"][str(budget)] = accuracy
    result["random"] = score("random", "random", random_policy(15))
    result["expert"] = score("expert", expert_policy.id, network_policy(expert_policy, device))
    stage("behaviour cloning + evaluation")

    # video of the first world model's BC policy at the largest budget, on an unseen level
    method, budget = methods[0], max(pc.label_budgets)
    video, reward = film(
        network_policy(load_policy(bc_ckpts[(method, budget)], device), device),
        spec,
        seed=7,
        steps=pc.video_steps,
        path=root / "videos" / f"bc-{method}-{budget_label(budget)}.gif",
    )
    expert_curve = load_checkpoint(expert_ckpt).get("curve", [])
    result["expert_training"] = {
        "checkpoint": str(Path(expert_ckpt).resolve()),
        "curve_last": expert_curve[-1:],
    }
    result["demos"] = {
        "dataset": demo_name(cfg),
        "splits": load_manifest(demo_dir)["splits"],
        "levels": list(pc.demo_levels),
        "eval_levels": list(pc.eval_levels),
    }
    stage("video")
    result["timings_s"] = clock
    notes = [
        f"Video: {video.relative_to(root)} ({method} BC policy, {budget_label(budget)} labels, reward "
        f"{reward:.1f} in {pc.video_steps} steps on an unseen level).",
        f"Demos: {pc.demo_episodes} expert episodes on levels {list(pc.demo_levels)}; scored on "
        f"{list(pc.eval_levels)} ({pc.seeds} seeds x {pc.eval_episodes} episodes per row).",
        f"Stage times (s): {json.dumps(clock)}.",
    ]
    report = write_report({game: result}, root, notes)
    print("\n" + report.read_text())
    print(f"policy {game}: {time.perf_counter() - start:.0f}s; table: {report}")
    return report


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--config", required=True, help="a Procgen preset in configs/ (bigfish, leaper, starpilot)"
    )
    p.add_argument("--brief", action="store_true", help="CPU-sized: short expert, small demo set and models")
    p.add_argument(
        "--nproc", type=int, default=1, help="GPUs for the world-model stages (torchrun on this node)"
    )
    p.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. policy.seeds=5 expert.total_steps=1e6"
    )
    args = p.parse_args()
    main(args.config, args.overrides, args.brief, args.nproc)
