"""Train every model of the paper's Tables 1 and 6 on one dataset and write the comparison (``make compare``).

    python -m train.compare --config configs/multigrid.yaml --brief       # CPU: configs/brief.yaml sizes
    python -m train.compare --config configs/bigfish.yaml --nproc 8       # the full preset on 8 GPUs
    python -m train.compare --config configs/multigrid.yaml --models flam genie flam_global

Stages, each resumed or skipped when already done (same folders, same config): ingest the dataset
(simulators; nuPlan must be ingested first, see docs/nuplan.md), train its tokenizer, precompute the token
cache, train each model with ``train/lam.py`` on the same cache, then ``train/evaluate.py`` on all runs.
``--brief`` applies ``configs/brief.yaml`` (a CPU-sized run of the same code) and trains ``--jobs`` models at
once, one core each (small models use one core better than two). Writes
runs/compare-<dataset>[-brief]/{tok, <model>, logs, eval}/ (the tables: eval/table1.md, eval/table2_dci.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from tqdm import tqdm

from model.zoo import TABLE1_ORDER
from shards.config import merge, parse_overrides, split_overrides, to_dict
from shards.tokens import TokenCache, cache_dir, file_id
from train import evaluate, precompute, tokenizer
from train.config import Config, brief_config, check_stages, load_config, save_config

# Table 1's models, then the factorizer ablation of Table 6 (its DCI is Table 7's second column).
COMPARED = (*TABLE1_ORDER, "flam_no_temporal")


def with_runs(cfg: Config, root: Path, model: str = "flam") -> Config:
    """Point every run folder of ``cfg`` under ``root``."""
    data = to_dict(cfg)
    data["model"] = model
    data["tokenizer_train"]["run_dir"] = str(root / "tok")
    data["lam_train"]["run_dir"] = str(root / model)
    data["data"]["tokenizer"] = ""
    data["eval"]["out"] = str(root / "eval")
    return load_config(None, data)


def launch(module: str, config: Path, nproc: int, extra: list[str]) -> list[str]:
    """The command that runs a training stage (``train.lam``, ...): torchrun on this node for several
    GPUs, else python."""
    if nproc > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
        ]
    else:
        launcher = [sys.executable]
    return [*launcher, "-m", module, "--config", str(config), *extra]


def train_models(cfgs: list[Config], root: Path, nproc: int, jobs: int) -> None:
    """Train each model's run with ``train/lam.py`` in its own process, ``jobs`` at a time (each with
    cores / jobs threads); logs in <root>/logs/<run folder name>.log. A failed run stops everything,
    naming its log."""
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    threads = max(1, torch.get_num_threads() // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}

    def run(cfg: Config) -> str:
        name = cfg.lam_run_dir.name  # the model's name here; a study's own name for each of its runs
        config = root / f"{name}-config.yaml"
        save_config(cfg, config)
        log = logs / f"{name}.log"
        start = time.perf_counter()
        with open(log, "w") as out:
            done = subprocess.run(launch("train.lam", config, nproc, []), stdout=out, stderr=out, env=env)
        if done.returncode:
            raise RuntimeError(f"training {name} failed (exit {done.returncode}); see {log}")
        return f"{name} {time.perf_counter() - start:.0f}s"

    with ThreadPoolExecutor(max_workers=jobs) as pool, tqdm(total=len(cfgs), desc="models") as bar:
        for finished in pool.map(run, cfgs):
            bar.set_postfix_str(finished)
            bar.update(1)


def preset(config: str | Path, overrides: list[str], brief: bool) -> Config:
    """A dataset preset, at CPU size with ``brief`` (configs/brief.yaml), then the command-line overrides."""
    cfg = load_config(config)
    if brief:
        cfg = brief_config(cfg)
        # CPU-sized models gain little from a second intra-op thread and lose a lot when the cores are
        # busy (measured: the brief tokenizer ran 1.2 steps/s with 2 threads on a loaded 2-core machine,
        # 8 steps/s with 1); the models train `jobs` at a time instead.
        torch.set_num_threads(1)
    return load_config(None, merge(to_dict(cfg), parse_overrides(overrides)))


def compare_root(dataset: str, brief: bool) -> Path:
    """The folder of a dataset's comparison: its tokenizer and the models every study reuses."""
    return Path("runs") / f"compare-{dataset}{'-brief' if brief else ''}"


def prepare(cfg: Config, root: Path, nproc: int) -> None:
    """The data stages, each skipped or resumed when done: ingest (simulators), the tokenizer, the cache."""
    if cfg.ingest and not (cfg.dataset_dir / "manifest.json").exists():
        from train.demo import ingest

        print(f"== ingest {cfg.data.dataset} -> {cfg.dataset_dir}", flush=True)
        ingest(cfg)
    if not (cfg.dataset_dir / "manifest.json").exists():
        raise FileNotFoundError(
            f"no shards at {cfg.dataset_dir}: run `make ingest DATASET={cfg.data.dataset}` first"
        )

    print("== tokenizer and token cache", flush=True)
    if nproc > 1:
        path = root / "tokenizer-config.yaml"
        save_config(cfg, path)
        subprocess.run(launch("train.tokenizer", path, nproc, []), check=True)
        subprocess.run(launch("train.precompute", path, nproc, []), check=True)
    else:
        tokenizer.main(cfg)
        precompute.main(cfg)


def main(
    config: str | Path, overrides: list[str], models: list[str], brief: bool, nproc: int = 1, jobs: int = 1
) -> Path:
    """Preset <- (brief) <- command-line overrides; then every stage (see the module docstring)."""
    start = time.perf_counter()
    cfg = preset(config, overrides, brief)
    root = compare_root(cfg.data.dataset, brief)
    cfg = with_runs(cfg, root)
    for model in models:  # refuse a run that never leaves its first stage before hours of training
        check_stages(with_runs(cfg, root, model))
    prepare(cfg, root, nproc)
    train_cache = cache_dir(cfg.data.root, cfg.data.dataset, file_id(cfg.tokenizer_checkpoint), "train")
    has_actions = TokenCache(train_cache).has("actions")
    runs = []
    for model in models:
        if model == "world_model" and not has_actions:
            print(f"== {model}: skipped, {cfg.data.dataset} has no ground-truth actions", flush=True)
            continue
        runs.append(with_runs(cfg, root, model))
    print(f"== training {', '.join(r.model for r in runs)} ({jobs} at a time)", flush=True)
    train_models(runs, root, nproc, jobs)

    print("== evaluate", flush=True)
    out = evaluate.main([r.lam_run_dir for r in runs], [f"eval.out={root / 'eval'}"])
    print(f"compare {cfg.data.dataset}: {time.perf_counter() - start:.0f}s; table: {out / 'table1.md'}")
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a dataset preset in configs/")
    p.add_argument("--brief", action="store_true", help="CPU-sized: configs/brief.yaml over the preset")
    p.add_argument("--models", nargs="+", default=list(COMPARED), help="models of model/zoo.py")
    p.add_argument("--nproc", type=int, default=1, help="GPUs per training stage (torchrun on this node)")
    p.add_argument("--jobs", type=int, default=0, help="models trained at once (default: 2 brief, else 1)")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the preset, e.g. lam_train.steps=800")
    args = p.parse_args()
    models, swept = split_overrides(args.models)  # `--models a b lam_train.steps=8`
    if not models:
        p.error("--models needs at least one model of model/zoo.py")
    if args.jobs < 0:
        p.error("--jobs must be >= 0 (0: 2 with --brief, else 1)")
    jobs = args.jobs or (min(2, os.cpu_count() or 1) if args.brief else 1)
    main(args.config, [*swept, *args.overrides], models, args.brief, args.nproc, jobs)
