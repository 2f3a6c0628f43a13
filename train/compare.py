"""Train every model of the paper's Table 1 on one dataset and write the comparison (``make compare``).

    python train/compare.py --config configs/multigrid.yaml --brief       # CPU: minutes, small everything
    python train/compare.py --config configs/bigfish.yaml --nproc 8       # the full preset on 8 GPUs
    python train/compare.py --config configs/multigrid.yaml --models flam genie flam_global

Stages, each resumed or skipped when already done (same folders, same config): ingest the dataset
(simulators; nuPlan must be ingested first, see docs/nuplan.md), train its tokenizer, precompute the token
cache, train each model with ``train/lam.py`` on the same cache, then ``train/evaluate.py`` on all runs.
``--brief`` shrinks the preset (data, tokenizer, model widths, steps, eval clips) to a CPU-sized run that
exercises exactly the same code; its numbers show the pipeline works, not the paper's quality.
Writes runs/compare-<dataset>[-brief]/{tok, <model>, eval}/ (the table: eval/table1.md).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.zoo import TABLE1_ORDER
from shards.config import merge, parse_overrides, split_overrides, to_dict
from train import evaluate, lam, precompute, tokenizer
from train.config import Config, load_config

# A CPU-sized version of any preset: what changes is size and length, never the code path.
BRIEF = {
    "data": {"root": "data/compare-brief", "shuffle_buffer": 64, "num_workers": 1},
    # 1000 steps at lr 2e-3: the smallest run we found whose MultiGrid tokenizer draws the agents (35 dB;
    # 300 steps at 1e-3 gave 25.7 dB with walls and floor only, and every world model then matched).
    "tokenizer_train": {
        "steps": 1000,
        "batch_size": 32,
        "lr": 2.0e-3,
        "warmup_steps": 20,
        "log_every": 10,
        "image_every": 250,
        "ckpt_every": 250,
        "val_batches": 2,
    },
    "precompute": {"batch_clips": 8, "report_clips": 32},
    "lam": {
        "dim": 64,
        "num_heads": 4,
        "depth": 1,
        "slot_iters": 2,
        "slot_pretrain_steps": 200,
        "max_frames": 6,
    },
    "lam_train": {
        "steps": 400,
        "batch_size": 16,
        "window": 6,
        "window_stride": 2,
        "lr": 1.0e-3,
        "warmup_steps": 50,
        "log_every": 20,
        "val_every": 200,
        "ckpt_every": 200,
        "val_clips": 8,
        "rollout_steps": 5,
    },
    "eval": {"num_clips": 16, "batch_clips": 8},
}
BRIEF_INGEST = {  # per source: a few minutes of rendering on 2 cores
    "multigrid": {"episodes": 240, "clip_len": 16, "episodes_per_shard": 40, "source": {"episode_len": 32}},
    "procgen": {"episodes": 96, "clip_len": 16, "episodes_per_shard": 16, "source": {"max_episode_len": 64}},
}


def brief_config(cfg: Config) -> Config:
    """The preset shrunk to CPU size: same tokenizer stages (so the same token grid), narrower."""
    source = "multigrid" if cfg.data.dataset.startswith("multigrid") else "procgen"
    if cfg.data.dataset == "nuplan":
        raise ValueError("--brief renders its own data; ingest nuPlan from your logs first (docs/nuplan.md)")
    stages = len(cfg.tokenizer.channels)
    extra = {
        "tokenizer": {"channels": [min(16 * 2**i, 32) for i in range(stages)], "num_res_blocks": 1},
        "ingest": BRIEF_INGEST[source],
    }
    return load_config(None, merge(merge(to_dict(cfg), BRIEF), extra))


def with_runs(cfg: Config, root: Path, model: str = "flam") -> Config:
    """Point every run folder of ``cfg`` under ``root``."""
    data = to_dict(cfg)
    data["model"] = model
    data["tokenizer_train"]["run_dir"] = str(root / "tok")
    data["lam_train"]["run_dir"] = str(root / model)
    data["lam_train"]["tokenizer"] = ""
    data["eval"]["out"] = str(root / "eval")
    return load_config(None, data)


def launch(script: str, cfg: Config, nproc: int, extra: list[str]) -> None:
    """Run a training stage under torchrun on this node (several GPUs), with the resolved config."""
    path = Path(cfg.lam_train.run_dir).parent / f"{Path(script).stem}-config.yaml"
    from train.config import save_config

    save_config(cfg, path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    subprocess.run([*cmd, script, "--config", str(path), *extra], check=True)


def main(config: str | Path, overrides: list[str], models: list[str], brief: bool, nproc: int = 1) -> Path:
    """Preset <- (brief) <- command-line overrides; then every stage (see the module docstring)."""
    start = time.perf_counter()
    cfg = load_config(config)
    if brief:
        cfg = brief_config(cfg)
    cfg = load_config(None, merge(to_dict(cfg), parse_overrides(overrides)))
    root = Path("runs") / f"compare-{cfg.data.dataset}{'-brief' if brief else ''}"
    cfg = with_runs(cfg, root)
    if cfg.ingest and not (cfg.dataset_dir / "manifest.json").exists():
        from train.demo import ingest

        print(f"== ingest {cfg.data.dataset} -> {cfg.dataset_dir}", flush=True)
        ingest(cfg)
    if not (cfg.dataset_dir / "manifest.json").exists():
        raise FileNotFoundError(
            f"no shards at {cfg.dataset_dir}: run `make ingest DATASET={cfg.data.dataset}` first"
        )

    print("== tokenizer", flush=True)
    if nproc > 1:
        launch("train/tokenizer.py", cfg, nproc, [])
        launch("train/precompute.py", cfg, nproc, ["--tokenizer", str(cfg.tokenizer_checkpoint)])
    else:
        tokenizer.main(cfg)
        precompute.main(cfg, cfg.tokenizer_checkpoint)
    has_actions = any(cfg.dataset_dir.glob("tokens/*/train/parts/*/actions.npy"))
    run_dirs = []
    for model in models:
        if model == "world_model" and not has_actions:
            print(f"== {model}: skipped, {cfg.data.dataset} has no ground-truth actions", flush=True)
            continue
        print(f"== {model}", flush=True)
        run_cfg = with_runs(cfg, root, model)
        if nproc > 1:
            launch("train/lam.py", run_cfg, nproc, [])
        else:
            lam.main(run_cfg)
        run_dirs.append(run_cfg.lam_run_dir)

    print("== evaluate", flush=True)
    out = evaluate.main(run_dirs, [f"eval.out={root / 'eval'}"])
    print(f"compare {cfg.data.dataset}: {time.perf_counter() - start:.0f}s; table: {out / 'table1.md'}")
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a dataset preset in configs/")
    p.add_argument("--brief", action="store_true", help="CPU-sized: small data, widths and step counts")
    p.add_argument("--models", nargs="+", default=list(TABLE1_ORDER), help="models of model/zoo.py")
    p.add_argument("--nproc", type=int, default=1, help="GPUs per training stage (torchrun on this node)")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the preset, e.g. lam_train.steps=800")
    args = p.parse_args()
    models, swept = split_overrides(args.models)  # `--models a b lam_train.steps=8`
    if not models:
        p.error("--models needs at least one model of model/zoo.py")
    main(args.config, [*swept, *args.overrides], models, args.brief, args.nproc)
