"""The ingest driver and its Ray Data pipeline (the only module that imports Ray).

    blocks to do ──Ray Data map (one task per block: render → clip → encode → write tar)──► block records
                                                                   └──► manifest.json (last)

Local Ray with the machine's cores by default; an existing cluster when ``RAY_ADDRESS`` is set (the
output folder must then be on storage every worker can write, e.g. a shared filesystem). Resume: a
block whose record exists and whose shards are intact is not redone; everything else is (re)written
under temporary names and renamed, so a rerun after a kill finishes the job without duplicates.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ingest.block import block_units, run_block
from ingest.config import IngestConfig, RunOptions
from shards.config import diff
from shards.files import DataFileError, exclusive, read_json
from shards.format import SPLITS
from shards.integrity import shard_problem
from shards.manifest import (
    CONFIG_NAME,
    MANIFEST_NAME,
    PROGRESS_DIR,
    BlockRecord,
    build_manifest,
    read_block_records,
    write_manifest,
)
from shards.writer import TMP_SUFFIX, atomic_write_bytes

log = logging.getLogger(__name__)


class IngestError(RuntimeError):
    """A problem with the user's request or output folder, with the fix in the message."""


def run_ingest(cfg: IngestConfig, opts: RunOptions) -> dict[str, Any]:
    """Ingest ``cfg`` into ``<opts.out>/<dataset>/``; return the manifest."""
    cfg.validate()
    dataset_dir = Path(opts.out) / cfg.dataset
    with exclusive(_ensure_writable(dataset_dir), f"ingest of {cfg.dataset}"):
        prepare_output(cfg, opts)
        records = read_block_records(dataset_dir)
        todo = [
            b for b in range(cfg.num_blocks) if not _block_intact(dataset_dir, records.get(b), opts.verify)
        ]
        done_episodes = sum(len(block_units(cfg, b)) for b in range(cfg.num_blocks) if b not in todo)
        bar = tqdm(
            total=cfg.episodes,
            initial=done_episodes,
            unit="ep",
            desc=f"ingest {cfg.dataset}",
            disable=not opts.progress,
            dynamic_ncols=True,
        )
        frames = sum(e.num_frames for r in records.values() for e in r.episodes)
        if todo:
            run = _run_local if opts.executor == "local" else _run_ray
            for record in run(cfg, todo, dataset_dir, opts):
                records[record.block] = record
                frames += sum(e.num_frames for e in record.episodes)
                bar.update(len(record.episodes))
                bar.set_postfix(frames=frames, refresh=False)
        bar.close()
        manifest = build_manifest(cfg.dataset, cfg.to_dict(), [records[b] for b in range(cfg.num_blocks)])
        write_manifest(dataset_dir, manifest)
    return manifest


def _ensure_writable(dataset_dir: Path) -> Path:
    try:
        dataset_dir.mkdir(parents=True, exist_ok=True)
        probe = dataset_dir / f".write-probe{TMP_SUFFIX}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise IngestError(
            f"output folder {dataset_dir} is not writable ({e.strerror}); set OUT= to a folder "
            f"you can write (or fix its permissions)"
        ) from e
    return dataset_dir


def prepare_output(cfg: IngestConfig, opts: RunOptions) -> Path:
    """Check ``<out>/<dataset>`` holds nothing from another config; clear leftovers of a killed run.
    Call with the dataset folder's lock held."""
    dataset_dir = Path(opts.out) / cfg.dataset
    config_path = dataset_dir / CONFIG_NAME
    wanted = cfg.to_dict()
    if config_path.exists():
        existing = _read_config(config_path, opts.overwrite)
        changes = diff(existing, wanted) if existing is not None else ["ingest_config.json: unreadable"]
        if changes and not opts.overwrite:
            raise IngestError(
                f"{dataset_dir} already holds shards made with a different config:\n  "
                + "\n  ".join(changes)
                + "\nRerun with the same settings to resume, choose another OUT=, or pass --overwrite "
                "(make ingest ... ARGS=--overwrite) to delete those shards and start over."
            )
        if changes:
            remove_dataset_files(dataset_dir, cfg.dataset)
    elif any(next((dataset_dir / s).glob("*.tar"), None) for s in SPLITS) and not opts.overwrite:
        raise IngestError(
            f"{dataset_dir} holds tar files but no {CONFIG_NAME}: it was not written by this "
            "tool. Choose another OUT= or pass --overwrite."
        )
    for stale in dataset_dir.rglob(f"*{TMP_SUFFIX}"):  # leftovers of a killed run; never complete
        stale.unlink(missing_ok=True)
    atomic_write_bytes(config_path, json.dumps(wanted, sort_keys=True, indent=1).encode())
    return dataset_dir


def remove_dataset_files(dataset_dir: Path, dataset: str) -> None:
    """Delete what an ingest wrote (shards, progress, manifest, config), and nothing else."""
    for split in SPLITS:
        for tar in (dataset_dir / split).glob(f"{dataset}-{split}-*.tar"):
            tar.unlink()
    shutil.rmtree(dataset_dir / PROGRESS_DIR, ignore_errors=True)
    for name in (MANIFEST_NAME, CONFIG_NAME):
        (dataset_dir / name).unlink(missing_ok=True)


def _read_config(path: Path, overwrite: bool) -> dict[str, Any] | None:
    """The config an earlier run recorded; None when it is unreadable and --overwrite may start over."""
    try:
        return read_json(path, "pass --overwrite (ARGS=--overwrite) to delete this dataset's shards and redo")
    except DataFileError as err:
        if overwrite:
            return None
        raise IngestError(str(err)) from err


def _block_intact(dataset_dir: Path, record: BlockRecord | None, verify: bool = True) -> bool:
    """A recorded block counts as done only while its shards are all there at their recorded size and,
    with ``verify``, their recorded sha256 (flipped bits keep the size). A damaged block is redone."""
    if record is None:
        return False
    for shard in record.shards:
        problem = shard_problem(dataset_dir / shard.path, shard.size_bytes, shard.sha256 if verify else None)
        if problem:
            log.warning("ingest: redoing block %d: %s", record.block, problem)
            return False
    return True


def _run_local(
    cfg: IngestConfig, todo: list[int], dataset_dir: Path, opts: RunOptions
) -> Iterator[BlockRecord]:
    """In-process executor: the same block function, one at a time (debugging, tests, benchmarks)."""
    for block in todo:
        yield run_block(cfg, block, dataset_dir)


class _BlockTask:
    """Ray Data map function: one row ``{"block": b}`` in, the block's record (JSON) out."""

    def __init__(self, cfg: IngestConfig, dataset_dir: str) -> None:
        self.cfg, self.dataset_dir = cfg, dataset_dir

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        record = run_block(self.cfg, int(row["block"]), self.dataset_dir)
        return {"block": record.block, "record": record.to_json().decode()}


def init_ray(workers: int) -> int:
    """Connect to ``RAY_ADDRESS`` if set, else start local Ray; return the CPUs available."""
    import ray

    if not ray.is_initialized():
        kwargs: dict[str, Any] = dict(
            include_dashboard=False, log_to_driver=True, logging_level="WARNING", configure_logging=True
        )
        if os.environ.get("RAY_ADDRESS"):
            ray.init(**kwargs)  # ray.init reads RAY_ADDRESS itself
        else:
            ray.init(num_cpus=workers or os.cpu_count(), **kwargs)
    return int(ray.cluster_resources().get("CPU", 1))


def shutdown_ray() -> None:
    """Stop the Ray instance this process started or joined (frees local Ray workers before training);
    nothing when Ray was never imported."""
    if "ray" in sys.modules:
        import ray

        ray.shutdown()


def _run_ray(
    cfg: IngestConfig, todo: list[int], dataset_dir: Path, opts: RunOptions
) -> Iterator[BlockRecord]:
    import ray.data

    cpus = init_ray(opts.workers)
    concurrency = max(1, min(opts.workers or cpus, cpus, len(todo)))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # our own bar counts episodes and frames
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled": on purpose
    ds = ray.data.from_items([{"block": b} for b in todo], override_num_blocks=len(todo))
    ds = ds.map(
        _BlockTask(cfg, str(dataset_dir.resolve())),
        num_cpus=1,
        compute=ray.data.TaskPoolStrategy(size=concurrency),
    )
    for row in ds.iter_rows():
        yield BlockRecord.from_json(row["record"])


def print_summary(manifest: dict[str, Any], dataset_dir: Path, file=sys.stdout) -> None:
    """A small table of what was written."""
    print(f"\n{manifest['dataset']}: {dataset_dir}", file=file)
    print(f"  {'split':<6}{'episodes':>10}{'clips':>10}{'frames':>12}{'shards':>8}{'frac':>8}", file=file)
    for split, s in manifest["splits"].items():
        print(
            f"  {split:<6}{s['episodes']:>10}{s['clips']:>10}{s['frames']:>12}{s['shards']:>8}"
            f"{s['frame_fraction']:>8.3f}",
            file=file,
        )
    totals = manifest["totals"]
    print(
        f"  skipped: {totals['episodes_skipped']} episodes, {len(manifest['skips'])} skip records "
        f"(reasons in {dataset_dir / MANIFEST_NAME})",
        file=file,
    )
