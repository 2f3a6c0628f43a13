"""Precompute frames/s against the tokenizer's encode on in-memory frames, measured in the same run.

    python -m bench.precompute                                  # CPU defaults: 12 episodes, 3 repeats, ~3 min
    python -m bench.precompute --device cuda --episodes 200 --episodes-per-shard 10

Setup (untimed): ingest --episodes MultiGrid episodes into a temp dir, save a randomly initialised
tokenizer of the configs/multigrid.yaml preset (speed does not depend on the weights), and decode every
train clip once into memory, batched as precompute batches them with 0 workers (precompute.batch_clips
consecutive clips in manifest order). Measures frames/s of the train split through:
  encode        the in-memory uint8 batches -> device -> to_float -> tokenizer.encode (bf16 autocast on
                cuda, as precompute) -> uint16 codes on the host: the ceiling, no I/O at all
  precompute-0  train.precompute.encode_split, the real path (streaming ClipLoader: tar read + decode;
                encode; one part per shard written atomically with fsync; index.json), in one process
                with data.num_workers=0, into a fresh cache folder every run
  precompute-2  the same with 2 DataLoader workers decoding while the main process encodes
Headline: precompute-W / encode (DESIGN target >= 0.9 on GPU: I/O hidden behind the encoder). On a CPU
the encoder and the decode share the cores, so nothing hides there: the ratio shows what the I/O
costs. Each measure runs --repeats times after a warm-up, interleaved with the others (the order
rotated every repeat, so load drift spreads over all); medians are reported, with CPU seconds (this
process plus reaped workers), which move less than wall time on a shared machine. On CPU torch runs
--threads 1 by default (like bench/loader.py): with more threads than free cores the intra-op threads
spin-wait and timings vary several-fold. Writes bench/out/precompute.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from bench.timing import interleaved, timed
from model.tokenizer import Tokenizer, to_float
from shards.loader import ClipDataset, ClipLoader
from shards.manifest import load_manifest
from shards.tokens import TokenCache, cache_dir
from train.common import load_tokenizer
from train.config import Config, load_config
from train.precompute import encode_split


@torch.no_grad()
def encode_batches(
    tokenizer: Tokenizer, batches: list[torch.Tensor], device: torch.device, bf16: bool
) -> int:
    """The encode of precompute's loop on ready uint8 batches [B, T, H, W, 3]; returns the frames."""
    for frames in batches:
        x = to_float(frames.to(device, non_blocking=True))
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            codes = tokenizer.encode(x)
        codes.to(torch.uint16).cpu().numpy()
    return sum(b.shape[0] * b.shape[1] for b in batches)


def measure(
    cfg: Config,
    tokenizer: Tokenizer,
    tokenizer_id: str,
    device: torch.device,
    workers: list[int],
    repeats: int,
) -> dict[str, object]:
    """The measures of the module docstring on the train split of ``cfg.dataset_dir`` with ``tokenizer``
    (``cfg.precompute.batch_clips`` clips per encode); prints a table and returns the results. Writes the
    train token cache of ``tokenizer_id`` afresh every precompute run (and leaves the last one there)."""
    t0 = time.perf_counter()
    manifest = load_manifest(cfg.dataset_dir)
    split_dir = cache_dir(cfg.data.root, cfg.data.dataset, tokenizer_id, "train")
    bs = cfg.precompute.batch_clips
    bf16 = cfg.precompute.bf16 and device.type == "cuda"
    loader = ClipLoader(ClipDataset(cfg.dataset_dir, "train", rank=0, world_size=1), batch_size=bs)
    batches = [batch["frames"] for batch in loader]  # what precompute's loader yields, decoded once
    n_frames = sum(b.shape[0] * b.shape[1] for b in batches)
    if n_frames != manifest["splits"]["train"]["frames"]:
        raise RuntimeError(f"decoded {n_frames} train frames, the manifest says {manifest['splits']}")
    print(
        f"decoded into memory in {time.perf_counter() - t0:.0f}s: "
        f"{manifest['splits']['train']['shards']} train shards, "
        f"{sum(len(b) for b in batches)} clips, {n_frames} frames of {tuple(batches[0].shape[2:])}, "
        f"{len(batches)} batches of <= {bs} clips, device {device}",
        flush=True,
    )

    def run_precompute(workers: int) -> Callable[[], dict[str, float]]:
        run_cfg = replace(cfg, data=replace(cfg.data, num_workers=workers))

        def once() -> int:
            log = io.StringIO()
            with contextlib.redirect_stderr(log):  # precompute's progress bar; warnings re-printed
                encode_split(run_cfg, tokenizer, tokenizer_id, "train", 0, 1, device)
            for line in log.getvalue().replace("\r", "\n").splitlines():
                if line.strip() and not line.startswith("precompute train (rank"):
                    print(line, file=sys.stderr)
            return TokenCache(split_dir).num_frames  # index.json: read back what was written

        def run() -> dict[str, float]:
            shutil.rmtree(split_dir, ignore_errors=True)  # a fresh cache: nothing to resume
            result = timed(once, device)
            if result["frames"] != n_frames:
                raise RuntimeError(f"precompute wrote {result['frames']} frames, expected {n_frames}")
            return result

        return run

    runs: dict[str, Callable[[], dict[str, float]]] = {
        "encode": lambda: timed(lambda: encode_batches(tokenizer, batches, device, bf16), device)
    }
    runs.update({f"precompute-{w}": run_precompute(w) for w in workers})
    encode_batches(tokenizer, batches[:1], device, bf16)  # warm-up: allocator, kernels
    load_before = os.getloadavg()[0]
    measured = interleaved(runs, repeats, "frames", width=13)

    fps = {n: statistics.median(r["frames"] / r["seconds"] for r in rs) for n, rs in measured.items()}
    fpc = {n: statistics.median(r["frames"] / r["cpu_seconds"] for r in rs) for n, rs in measured.items()}
    results: dict[str, object] = {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "train_shards": manifest["splits"]["train"]["shards"],
        "frames": n_frames,
        "frame_hw": list(batches[0].shape[2:4]),
        "batch_clips": bs,
        "bf16": bf16,
        "tokenizer": {"channels": list(cfg.tokenizer.channels), "image_size": cfg.tokenizer.image_size},
        "repeats": repeats,
    }
    for name, rs in measured.items():
        results[name] = {
            "frames_per_s": round(fps[name], 2),
            "frames_per_cpu_s": round(fpc[name], 2),
            "runs": [{k: round(v, 4) for k, v in r.items()} for r in rs],
        }
    ratios = {}
    for w in workers:
        ratios[f"precompute{w}_vs_encode"] = fps[f"precompute-{w}"] / fps["encode"]
        ratios[f"cpu_precompute{w}_vs_encode"] = fpc[f"precompute-{w}"] / fpc["encode"]
    results["ratios"] = {k: round(v, 3) for k, v in ratios.items()}

    print(f"load average (1 min) before/after: {results['load_average_1min']} on {os.cpu_count()} cores")
    for name in runs:
        print(f"{name:>13}: {fps[name]:9,.1f} frames/s  {fpc[name]:9,.1f} frames/CPU s")
    print("                                              wall   CPU")
    for w in workers:
        wall, cpu = ratios[f"precompute{w}_vs_encode"], ratios[f"cpu_precompute{w}_vs_encode"]
        print(f"precompute-{w} / encode (target >= 0.9 on GPU):  {wall:4.2f}   {cpu:4.2f}")
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=12)
    p.add_argument("--episode-len", type=int, default=32)
    p.add_argument("--clip-len", type=int, default=16)
    p.add_argument("--episodes-per-shard", type=int, default=2)
    p.add_argument("--batch-clips", type=int, default=None, help="clips per encode (default: the preset, 16)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts to run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU (0: torch's default)")
    p.add_argument("--json", type=Path, default=Path("bench/out/precompute.json"))
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)  # several threads on a shared box spin-wait: 5-10x noisier

    from ingest.config import RunOptions, build_config  # the simulator: only for this setup
    from ingest.pipeline import run_ingest
    from tests.helpers import save_tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="bench-precompute-"))
    try:
        ingest_cfg = build_config(
            "multigrid",
            {
                "episodes": args.episodes,
                "clip_len": args.clip_len,
                "episodes_per_shard": args.episodes_per_shard,
                "source": {"episode_len": args.episode_len},
            },
        )
        run_ingest(ingest_cfg, RunOptions(out=str(tmp), executor="local", progress=False))
        preset = load_config("configs/multigrid.yaml")
        ckpt = save_tokenizer(tmp / "tok", preset.tokenizer)
        overrides: dict = {"data": {"root": str(tmp), "tokenizer": str(ckpt)}}
        if args.batch_clips:
            overrides["precompute"] = {"batch_clips": args.batch_clips}
        cfg: Config = load_config("configs/multigrid.yaml", overrides)
        tokenizer, tokenizer_id = load_tokenizer(ckpt, device)
        results = measure(cfg, tokenizer, tokenizer_id, device, args.workers, args.repeats)
        results["episodes"] = args.episodes
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
