"""FLAM training samples/s from the token cache against the pixel path, measured in the same run.

    python -m bench.train_throughput                            # CPU defaults: batch 8, 3 x 3 steps, ~2-3 min
    python -m bench.train_throughput --device cuda --batch 32 --steps 20 --episodes 60
    python -m bench.train_throughput --dim 64 --depth 1         # a smaller FLAM for a quick CPU run

Setup (untimed): ingest --episodes MultiGrid episodes into a temp dir, save a randomly initialised
tokenizer of the configs/multigrid.yaml preset (speed does not depend on the weights) and build its
train token cache with ``train.precompute.main``. One FLAM (configs/multigrid.yaml LAMConfig, N=256
tokens of F=5, ``--dim/--depth`` override the preset) with one AdamW then trains on batches of B
windows of T frames from either path:
  cache       the step of train/lam.py: TokenWindows + GlobalBatches -> collate -> to_model_batch (+ noise)
              -> forward / backward / grad clip / AdamW / LR schedule
  pixel       ClipLoader(ClipDataset(train, endless, shuffled, buffer, window=T), B, --workers) decodes the
              clips every step, the frozen tokenizer encodes them (``tokenizer.encode``, as precompute
              does) -> codes_to_features (+ noise) -> the same step
  cache-data  the cache path without the model step: time to produce one batch of features
  pixel-data  the pixel path without the model step (decode + encode): what the cache removes
Headline ratios: samples/s cache / pixel (DESIGN target >= 20x) and cache-data / pixel-data. On a CPU
the model step dominates both paths, so the first ratio is bounded by (step + encode) / step; the
data-side ratio is the saving itself. Each measure runs --repeats times after a warm-up, interleaved
with the others (the order rotated every repeat, so load drift spreads over all); medians are
reported. Every pixel run starts a fresh loader and takes one untimed batch first (worker start-up
excluded), then closes it, so its workers do not run during the other measures. CPU seconds (this
process plus reaped workers) are recorded too: on a shared machine they move less than wall time. On
CPU torch runs --threads 1 by default (like bench/loader.py): with more threads than free cores the
intra-op threads spin-wait and one step varies 5-10x between runs. Writes bench/out/train_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from bench.timing import interleaved, sync, timed
from model.base import TokenWorldModel
from model.zoo import build_model
from shards.loader import ClipDataset, ClipLoader
from shards.tokens import TokenCache, cache_dir
from train import precompute
from train.batches import GlobalBatches, TokenWindows, collate, to_model_batch
from train.common import load_tokenizer, warmup_cosine
from train.config import Config, load_config
from train.lam import latent_inputs, train_step

Batch = dict[str, torch.Tensor]


class Trainer:
    """One model of ``cfg.model`` (or ``model``), its AdamW and LR schedule, stepped by train/lam.py's
    ``train_step`` (one process; ``compile``: torch.compile as ``lam_train.compile`` does)."""

    def __init__(
        self, cfg: Config, device: torch.device, compile: bool = False, model: TokenWorldModel | None = None
    ) -> None:
        lt = cfg.lam_train
        self.cfg, self.device, self.step = cfg, device, 0
        torch.manual_seed(lt.seed)
        self.model = (model or build_model(cfg.model, cfg.lam)).to(device)
        self.train_model = torch.compile(self.model) if compile else self.model
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=lt.lr, betas=tuple(lt.betas), weight_decay=lt.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_cosine(s, lt.warmup_steps, lt.steps)
        )
        self.use_bf16 = lt.bf16 and device.type == "cuda"

    def add_noise(self, batch: Batch) -> Batch:
        """The step's latent inputs (noise, kl_weight), as the trainer adds them."""
        batch.update(latent_inputs(self.cfg, self.model, batch["features"], self.step, 0, 1))
        return batch

    def train_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        lt = self.cfg.lam_train
        args = (self.optimizer, self.scheduler, lt.grad_clip, self.use_bf16)
        metrics, _ = train_step(self.train_model, self.model, batch, self.step, *args)
        self.step += 1
        return metrics


class CacheBatches:
    """Feature batches from the token cache, as train/lam.py makes them."""

    def __init__(self, cfg: Config, split_dir: Path, tokenizer: torch.nn.Module, trainer: Trainer) -> None:
        lt = cfg.lam_train
        cache = TokenCache(split_dir)
        self.windows = TokenWindows(cache, lt.window, lt.window_stride)
        self.batches = GlobalBatches(len(self.windows), lt.batch_size, lt.seed)
        self.tokenizer = tokenizer
        self.trainer = trainer

    def next(self) -> Batch:
        t = self.trainer
        items = [self.windows[int(i)] for i in self.batches.indices(t.step, 0, 1)]
        batch = to_model_batch(collate(items), self.tokenizer, t.device, check_codes=False)
        return t.add_noise(batch)


class PixelBatches:
    """Feature batches from the clip shards: streaming decode, then the frozen tokenizer's encode."""

    def __init__(self, cfg: Config, tokenizer: torch.nn.Module, trainer: Trainer, workers: int) -> None:
        self.cfg, self.tokenizer, self.trainer, self.workers = cfg, tokenizer, trainer, workers
        self.stream: Iterator[dict] | None = None

    def start(self) -> None:
        """A fresh endless shuffled stream of T-frame windows (the tokenizer-training loader setup)."""
        lt = self.cfg.lam_train
        dataset = ClipDataset(
            self.cfg.dataset_dir,
            "train",
            infinite=True,
            shuffle=True,
            buffer_size=self.cfg.data.shuffle_buffer,
            window=lt.window,
            seed=lt.seed,
        )
        self.stream = iter(ClipLoader(dataset, batch_size=lt.batch_size, num_workers=self.workers))

    def stop(self) -> None:
        if self.stream is not None:
            self.stream.close()  # joins the DataLoader workers
            self.stream = None

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        t = self.trainer
        with torch.autocast(device_type=t.device.type, dtype=torch.bfloat16, enabled=t.use_bf16):
            return self.tokenizer.encode(frames.to(t.device, non_blocking=True))  # uint8 THWC in

    def next(self) -> Batch:
        raw = next(self.stream)
        codes = self.encode(raw["frames"])
        batch = {"features": self.tokenizer.codes_to_features(codes, check=False).flatten(2, 3)}
        for name in ("actions", "positions"):
            if name in raw:
                batch[name] = raw[name].to(self.trainer.device, non_blocking=True)
        return self.trainer.add_noise(batch)


def setup(args: argparse.Namespace, tmp: Path) -> tuple[Config, Path]:
    """Shards, a random tokenizer checkpoint and its train token cache -> (config, cache split dir)."""
    from tests.helpers import ingest_multigrid, save_tokenizer  # the simulator: only for this setup

    t0 = time.perf_counter()
    ingest_multigrid(tmp, episodes=args.episodes, episode_len=args.episode_len, clip_len=args.clip_len)
    preset = load_config("configs/multigrid.yaml")
    ckpt = save_tokenizer(tmp / "tok", preset.tokenizer)
    lam = {"num_tokens": 256, "feature_dim": 5, "max_frames": args.window}
    lam.update({k: v for k, v in (("dim", args.dim), ("depth", args.depth)) if v is not None})
    cfg = load_config(
        "configs/multigrid.yaml",
        {
            "data": {"root": str(tmp), "num_workers": args.workers, "tokenizer": str(ckpt)},
            "lam": lam,
            "lam_train": {"batch_size": args.batch, "window": args.window},
            "precompute": {"splits": ["train"], "report_clips": 1},
        },
    )
    precompute.main(cfg)  # on cuda when there is one: setup only, untimed
    _, tokenizer_id = load_tokenizer(ckpt, torch.device("cpu"))
    split_dir = cache_dir(cfg.data.root, cfg.data.dataset, tokenizer_id, "train")
    print(f"setup (ingest, tokenizer, token cache) took {time.perf_counter() - t0:.0f}s", flush=True)
    return cfg, split_dir


def measure(
    cfg: Config,
    split_dir: Path,
    device: torch.device,
    steps: int,
    data_batches: int,
    repeats: int,
    workers: int,
    compile: bool = False,
) -> dict[str, object]:
    """The four measures of the module docstring on ``cfg`` (``cfg.model``, ``lam_train.batch_size``
    windows of ``lam_train.window`` frames) and the train token cache in ``split_dir``; prints a table and
    returns the results (samples/s, CPU seconds, ratios)."""
    tokenizer, _ = load_tokenizer(cfg.tokenizer_checkpoint, device)
    trainer = Trainer(cfg, device, compile)
    cache = CacheBatches(cfg, split_dir, tokenizer, trainer)
    pixel = PixelBatches(cfg, tokenizer, trainer, workers)
    b = cfg.lam_train.batch_size

    def train_cache() -> int:
        for _ in range(steps):
            trainer.train_step(cache.next())
        return steps * b

    def data_cache() -> int:
        for _ in range(data_batches):
            cache.next()
        return data_batches * b

    def run_pixel(n: int, train: bool) -> Callable[[], dict[str, float]]:
        def run() -> dict[str, float]:
            pixel.start()
            try:
                pixel.next()  # untimed: worker start-up and the first fill of the shuffle buffer
                sync(device)

                def body() -> int:
                    for _ in range(n):
                        batch = pixel.next()
                        if train:
                            trainer.train_step(batch)
                    return n * b

                return timed(body, device, "samples")
            finally:
                pixel.stop()

        return run

    runs: dict[str, Callable[[], dict[str, float]]] = {
        "cache": lambda: timed(train_cache, device, "samples"),
        "pixel": run_pixel(steps, train=True),
        "cache-data": lambda: timed(data_cache, device, "samples"),
        "pixel-data": run_pixel(steps, train=False),
    }
    print(f"warm-up (device {device}, batch {b}, window {cfg.lam_train.window}) ...", flush=True)
    trainer.train_step(cache.next())
    pixel.start()
    trainer.train_step(pixel.next())
    pixel.stop()
    cache.next()

    load_before = os.getloadavg()[0]
    measured = interleaved(runs, repeats, "samples", width=10)

    rate = {n: statistics.median(r["samples"] / r["seconds"] for r in rs) for n, rs in measured.items()}
    cpu_rate = {
        n: statistics.median(r["samples"] / r["cpu_seconds"] for r in rs) for n, rs in measured.items()
    }
    ratios = {
        "train_cache_vs_pixel": rate["cache"] / rate["pixel"],
        "data_cache_vs_pixel": rate["cache-data"] / rate["pixel-data"],
        "cpu_train_cache_vs_pixel": cpu_rate["cache"] / cpu_rate["pixel"],
        "cpu_data_cache_vs_pixel": cpu_rate["cache-data"] / cpu_rate["pixel-data"],
    }
    results: dict[str, object] = {
        "device": str(device),
        "model": cfg.model,
        "compile": compile,
        "torch_threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "batch": b,
        "window": cfg.lam_train.window,
        "workers": workers,
        "steps": steps,
        "data_batches": {"cache": data_batches, "pixel": steps},
        "repeats": repeats,
        "lam": {k: getattr(cfg.lam, k) for k in ("dim", "depth", "num_slots", "num_tokens", "feature_dim")},
        "tokenizer": {"channels": list(cfg.tokenizer.channels), "image_size": cfg.tokenizer.image_size},
        "train_windows": len(cache.windows),
    }
    for name, rs in measured.items():
        results[name] = {
            "samples_per_s": round(rate[name], 2),
            "samples_per_cpu_s": round(cpu_rate[name], 2),
            "ms_per_batch": round(1000 * b / rate[name], 2),
            "runs": [{k: round(v, 4) for k, v in r.items()} for r in rs],
        }
    results["ratios"] = {k: round(v, 2) for k, v in ratios.items()}

    print(f"load average (1 min) before/after: {results['load_average_1min']} on {os.cpu_count()} cores")
    for name in runs:
        print(
            f"{name:>10}: {rate[name]:10,.1f} samples/s  {1000 * b / rate[name]:9.1f} ms/batch  "
            f"{cpu_rate[name]:10,.1f} samples/CPU s"
        )
    print("                                        wall      CPU")
    print(
        f"training cache / pixel (target >= 20x): {ratios['train_cache_vs_pixel']:6.2f}x  "
        f"{ratios['cpu_train_cache_vs_pixel']:6.2f}x"
    )
    print(
        f"data side cache / pixel:                {ratios['data_cache_vs_pixel']:6.0f}x  "
        f"{ratios['cpu_data_cache_vs_pixel']:6.0f}x"
    )
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--steps", type=int, default=3, help="timed training steps (and pixel-data batches) per run"
    )
    p.add_argument("--data-batches", type=int, default=50, help="cache-data batches per run")
    p.add_argument("--batch", type=int, default=None, help="windows per step (default 32 on cuda, 8 on CPU)")
    p.add_argument("--window", type=int, default=8, help="frames per window T")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the pixel path")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU (0: torch's default)")
    p.add_argument("--dim", type=int, default=None, help="FLAM width (default: the preset, 256)")
    p.add_argument("--depth", type=int, default=None, help="FLAM depth (default: the preset, 2)")
    p.add_argument("--episodes", type=int, default=12)
    p.add_argument("--episode-len", type=int, default=32)
    p.add_argument("--clip-len", type=int, default=16)
    p.add_argument("--json", type=Path, default=Path("bench/out/train_throughput.json"))
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)  # several threads on a shared box spin-wait: 5-10x noisier
    if args.batch is None:
        args.batch = 32 if device.type == "cuda" else 8

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        cfg, split_dir = setup(args, tmp)
        results = measure(cfg, split_dir, device, args.steps, args.data_batches, args.repeats, args.workers)
        results["episodes"] = args.episodes
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
