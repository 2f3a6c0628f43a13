"""The whole job end to end on a small MultiGrid set: ``make demo`` (CPU when there is no GPU).

    python -m train.demo [--config configs/demo.yaml] [key=value ...]

1. ingest: render the preset's MultiGrid episodes into clip shards (Ray Data, local)  -> data/demo/
2. tokenizer: train the FSQ tokenizer on the shards                                    -> runs/demo/tok/
3. precompute: encode every split into the token cache, with the Recon report  -> data/demo/.../tokens/
4. FLAM: train on the cached tokens                                                     -> runs/demo/flam/
5. evaluate: score FLAM's rollouts against the real frames exactly as ``train/evaluate.py`` scores any
   run (the preset's ``eval`` section), next to the tokenizer's Recon ceiling and the Copy floor
                                                    -> runs/demo/eval/table1.md, scores.json, videos/

Sizes are the preset's (configs/demo.yaml), not constants here. Every stage resumes: rerunning after a
kill finishes the job without redoing finished work.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from shards.config import to_dict
from train import evaluate, lam, precompute, tokenizer
from train.config import Config, load_config


def ingest(cfg: Config) -> None:
    """Render the dataset of ``cfg.ingest`` into ``cfg.data.root`` (local Ray), then stop Ray."""
    from ingest.config import RunOptions, build_config
    from ingest.pipeline import print_summary, run_ingest, shutdown_ray

    manifest = run_ingest(build_config(cfg.data.dataset, cfg.ingest), RunOptions(out=cfg.data.root))
    print_summary(manifest, cfg.dataset_dir)
    shutdown_ray()  # free the local Ray workers before training


def main(cfg: Config) -> Path:
    """Run every stage; returns the evaluation folder."""
    start = time.perf_counter()
    stages, results = [], {}
    # Evaluation reads the run's config from its checkpoint: pass this config's eval section explicitly, so
    # a rerun with other eval settings scores with them (JSON values are YAML overrides).
    eval_overrides = [f"eval.{k}={json.dumps(v)}" for k, v in to_dict(cfg.eval).items()]
    for name, run in (
        ("ingest", lambda: ingest(cfg)),
        ("tokenizer", lambda: tokenizer.main(cfg)),
        ("precompute", lambda: precompute.main(cfg)),
        ("flam", lambda: lam.main(cfg)),
        ("evaluate", lambda: evaluate.main([cfg.lam_run_dir], eval_overrides)),
    ):
        t = time.perf_counter()
        print(f"\n== {name} ==", flush=True)
        results[name] = run()
        stages.append(f"{name} {time.perf_counter() - t:.0f}s")
    print(f"stages: {', '.join(stages)}; total {time.perf_counter() - start:.0f}s")
    return results["evaluate"]


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. lam_train.steps=100")
    args = p.parse_args()
    main(load_config(args.config, args.overrides))
