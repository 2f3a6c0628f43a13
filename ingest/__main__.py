"""``python -m ingest DATASET [options] [key=value ...]``: render or extract a dataset into clip shards.

Examples:
    python -m ingest multigrid --episodes 200
    python -m ingest bigfish --out /data/shards --workers 16
    python -m ingest multigrid source.num_agents=8 source.variant=correlated
    RAY_ADDRESS=ray://head:10001 python -m ingest multigrid --episodes 100000
    NUPLAN_DATA_ROOT=/data/nuplan python -m ingest nuplan          # see docs/nuplan.md
    NUPLAN_DB=/data/nuplan-v1.1/splits/mini NUPLAN_SENSOR_ROOT=/mnt/cams1,/mnt/cams2 python -m ingest nuplan
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ingest.config import RunOptions, build_config, dataset_names
from ingest.pipeline import IngestError, print_summary, run_ingest
from shards.config import parse_overrides
from shards.files import FolderLocked


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ingest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("dataset", help=f"one of {', '.join(dataset_names())}, or any Procgen game name")
    p.add_argument("overrides", nargs="*", help="config overrides such as source.num_agents=8 or seed=3")
    p.add_argument("--out", default="data", help="output root; shards land in OUT/<dataset>/ (default: data)")
    p.add_argument(
        "--episodes",
        type=int,
        help="episodes to render, or nuPlan logs to read (default: the preset; nuplan: all)",
    )
    p.add_argument("--clip-len", type=int, help="frames per clip (default 16)")
    p.add_argument("--workers", type=int, default=0, help="parallel Ray tasks (default: all cores)")
    p.add_argument(
        "--executor",
        choices=("ray", "local"),
        default="ray",
        help="ray: Ray Data pipeline (default); local: in-process, one block at a time",
    )
    p.add_argument("--overwrite", action="store_true", help="delete shards made with another config first")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="on resume, check finished shards by size only, not sha256 (for very large sets)",
    )
    return p.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        overrides = parse_overrides(args.overrides)
        if args.episodes is not None:
            overrides["episodes"] = args.episodes
        if args.clip_len is not None:
            overrides["clip_len"] = args.clip_len
        if args.workers < 0:
            raise ValueError(f"--workers must be >= 0 (0 = all cores), got {args.workers}")
        cfg = build_config(args.dataset, overrides)
        opts = RunOptions(
            out=args.out,
            workers=args.workers,
            executor=args.executor,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            verify=not args.no_verify,
        )
        manifest = run_ingest(cfg, opts)
    except (ValueError, IngestError, FolderLocked) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_summary(manifest, Path(args.out) / cfg.dataset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
