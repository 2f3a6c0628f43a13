"""The prepared device check (issue 17): on one GPU, in at most ~8 minutes and with no network, build a small
dataset and measure what DESIGN.md section 9 asks of the GPU path, every figure next to a baseline measured
in the same run. Runs to the end on a CPU too (tiny sizes; the default test suite runs it).

    make bench-gpu                     # python -m bench.gpu --device cuda --docs docs/benchmarks.md
    make bench-gpu DEVICE=cpu          # tiny sizes, eager, the same code path
    python -m bench.gpu --device cpu --size preset --docs docs/benchmarks.md   # the preset's widths on a CPU
    python -m bench.gpu --device cpu --models flam bare --out /tmp/b      # what the tests run

(a) Training throughput of every model of ``model.zoo.MODELS`` (train/lam.py's ``train_step``: bf16 autocast
    on GPU, ``torch.compile``), samples/s and achieved FLOP/s, next to ``bare``: a transformer stack of the
    same width on the same tokens (``bench/model_throughput.py``). Target: FLAM >= 0.8 of the bare stack.
    On GPU every entry compiles in a process of its own, all at once, then they time one after another;
    ``flam@reduce-overhead`` and ``bare@reduce-overhead`` add CUDA graphs.
(b) Token cache vs pixel path (decode + tokenizer encode every step), FLAM training samples/s
    (``bench/train_throughput.py``). Target >= 20x.
(c) Precompute frames/s (shard read + decode in DataLoader workers + encode + atomic part writes) vs the
    tokenizer's encode on the same frames held in memory (``bench/precompute.py``). Target >= 0.9.
(d) A short real training run of FLAM through ``train/lam.py`` (compile and bf16 on GPU, checkpoints,
    validation rollouts through the decoder), ended halfway after its checkpoint and resumed in the same
    process: the loss curve of both halves, from its TensorBoard log.

Data (untimed setup): ``bench/synthetic.py`` renders MultiGrid-like frames with numpy and writes real clip
shards (PyAV mp4, manifest); a randomly initialised tokenizer of configs/multigrid.yaml (speed does not
depend on the weights) makes the token cache through ``train/precompute.py``. Needs torch, numpy, einops,
pyyaml, tqdm, pillow, tensorboard and PyAV: no simulator, Ray, decord or webdataset (the lent GPU machines
have none of them; carry PyAV's wheel, docs/benchmarks.md gives the command).

Writes ``<out>/gpu.json`` and ``<out>/gpu.md``; ``--docs FILE`` puts the Markdown into FILE between the
markers of this device kind (``<!-- bench-gpu:cuda -->`` ... ``<!-- /bench-gpu:cuda -->``), and
``--from-json gpu.json --docs FILE`` does that for a JSON brought back from a device machine. Every section
that fails is recorded with its traceback and the others still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from bench import model_throughput, precompute, train_throughput
from bench.synthetic import SyntheticConfig, write_dataset
from model.zoo import MODELS
from shards.config import merge
from shards.tokens import TokenCache, cache_dir
from tests.helpers import save_tokenizer
from train import lam as train_lam
from train import precompute as train_precompute
from train.common import load_checkpoint, load_tokenizer
from train.config import Config, load_config, with_token_shape

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Sizes:
    """One size of the whole check: the data, config overrides of configs/multigrid.yaml, and each section's
    step counts."""

    data: SyntheticConfig
    overrides: dict[str, Any]
    warmup: int  # (a) untimed steps per entry
    steps: int  # (a) timed steps per repeat; (b) steps per run
    repeats: int  # (a), (b), (c)
    data_batches: int  # (b) cache-side batches per data-only run
    loader_workers: int  # (b) DataLoader workers of the pixel path
    precompute_workers: tuple[int, ...]  # (c)
    train_steps: int  # (d), resumed after half
    log_every: int  # (d)
    compile_deadline_s: float = 300.0  # (a) entries not compiled by then are stopped
    notes: list[str] = field(default_factory=list)


SIZES = {
    # configs/multigrid.yaml as it is (128x128 frames, IMPALA 64/128/128, 16x16 tokens, FLAM D=256, depth 2,
    # K=4, windows of 16 frames, batch 32); one window per 16-frame clip, 409 train windows.
    "full": Sizes(
        data=SyntheticConfig(episodes=128, episode_len=64, clip_len=16, image_size=128, grid=16),
        overrides={
            "lam": {"slot_pretrain_steps": 0},
            "lam_train": {"batch_size": 32, "window": 16, "window_stride": 16},
            "data": {"shuffle_buffer": 64},
            "precompute": {"report_clips": 16},
        },
        warmup=5,
        steps=20,
        repeats=3,
        data_batches=50,
        loader_workers=8,
        precompute_workers=(0, 4, 8),
        train_steps=200,
        log_every=10,
        compile_deadline_s=240.0,
    ),
    # The full preset's widths and tokens at a batch a CPU steps in seconds: the CPU's own honest ratios.
    "preset": Sizes(
        data=SyntheticConfig(
            episodes=20, episode_len=32, clip_len=16, image_size=128, grid=16, episodes_per_shard=10
        ),
        overrides={
            "lam": {"slot_pretrain_steps": 0},
            "lam_train": {
                "batch_size": 2,
                "window": 16,
                "window_stride": 16,
                "val_clips": 2,
                "rollout_steps": 2,
            },
            "data": {"shuffle_buffer": 16},
            "precompute": {"batch_clips": 4, "report_clips": 4},
        },
        warmup=2,
        steps=2,
        repeats=2,
        data_batches=10,
        loader_workers=0,  # all decode in-process: CPU seconds of DataLoader workers outlive the timing
        precompute_workers=(0,),
        train_steps=4,
        log_every=1,
        compile_deadline_s=3600.0,
    ),
    # Seconds on a CPU: 32x32 frames, 4x4 tokens, FLAM D=32.
    "tiny": Sizes(
        data=SyntheticConfig(
            episodes=10, episode_len=16, clip_len=8, image_size=32, grid=8, episodes_per_shard=5
        ),
        overrides={
            "tokenizer": {"image_size": 32, "channels": [8, 8, 8], "num_res_blocks": 1},
            "lam": {
                **{"dim": 32, "num_heads": 2, "depth": 1, "slot_iters": 2, "max_frames": 4},
                **{"vq_codes": 16, "slot_pretrain_steps": 0},
            },
            "lam_train": {
                "batch_size": 4,
                "window": 4,
                "window_stride": 4,
                "val_clips": 2,
                "rollout_steps": 2,
            },
            "data": {"shuffle_buffer": 8},
            "precompute": {"batch_clips": 4, "report_clips": 4},
        },
        warmup=3,
        steps=2,
        repeats=1,
        data_batches=5,
        loader_workers=0,
        precompute_workers=(0,),
        train_steps=8,
        log_every=2,
        compile_deadline_s=1800.0,
    ),
}

TARGETS = {"flam_vs_bare": 0.8, "cache_vs_pixel": 20.0, "precompute_vs_encode": 0.9}
DEFAULT_SIZE = {"cuda": "full", "cpu": "tiny"}


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "host": platform.machine(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
        )
    else:
        env["torch_threads"] = torch.get_num_threads()
    try:
        import av

        env["pyav"] = av.__version__
    except ImportError:
        env["pyav"] = None
    return env


def setup(sizes: Sizes, root: Path) -> tuple[Config, Path]:
    """Shards, a random tokenizer and the token cache of every split -> (config with the cache's token shape,
    train split dir)."""
    t0 = time.perf_counter()
    manifest = write_dataset(root, sizes.data)
    preset = REPO / "configs/multigrid.yaml"
    ckpt = save_tokenizer(root / "tok", load_config(preset, sizes.overrides).tokenizer)
    paths = {"data": {"root": str(root), "num_workers": 0, "tokenizer": str(ckpt)}}
    cfg = load_config(preset, merge(sizes.overrides, paths))
    train_precompute.main(cfg)
    _, tokenizer_id = load_tokenizer(ckpt, torch.device("cpu"))
    split_dir = cache_dir(cfg.data.root, cfg.data.dataset, tokenizer_id, "train")
    info = TokenCache(split_dir).info
    cfg = with_token_shape(cfg, info.grid[0] * info.grid[1], len(info.levels))  # N, F: as train/lam.py does
    totals = manifest["totals"]
    print(
        f"setup: {totals['frames']} frames in {totals['clips']} clips, tokenizer, token cache: "
        f"{time.perf_counter() - t0:.0f}s",
        flush=True,
    )
    return cfg, split_dir


def training_run(cfg: Config, sizes: Sizes, run_dir: Path, compile: bool) -> dict[str, Any]:
    """(d): FLAM through train/lam.py for ``train_steps``, ended after the checkpoint at half and resumed."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps, half = sizes.train_steps, sizes.train_steps // 2
    lt = replace(cfg.lam_train, run_dir=str(run_dir), steps=steps, ckpt_every=steps, val_every=half)
    cfg = replace(cfg, model="flam", lam_train=replace(lt, log_every=sizes.log_every, compile=compile))
    t0 = time.perf_counter()
    train_lam.main(cfg, stop_after=half)
    t1 = time.perf_counter()
    final = train_lam.main(cfg)  # resumes from the checkpoint of step `half`
    t2 = time.perf_counter()
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    return {
        "steps": steps,
        "resumed_at": half,
        "final_step": int(load_checkpoint(final)["step"]),
        "first_half_s": round(t1 - t0, 2),
        "second_half_s": round(t2 - t1, 2),
        "loss": [(s, round(v, 6)) for s, v in scalars.get("train/loss", [])],
        "samples_per_s": [(s, round(v, 1)) for s, v in scalars.get("perf/samples_per_s", [])],
        "val": {
            tag: [(s, round(v, 4)) for s, v in vals] for tag, vals in scalars.items() if tag.startswith("val")
        },
    }


def run_section(name: str, results: dict[str, Any], fn: Callable[[], Any], out: Path) -> None:
    """Run one section into ``results[name]``; a failure is recorded with its traceback, printed, and the
    next section still runs (one device run must bring back everything it can). ``out/gpu.json`` is
    rewritten after every section, so a run stopped by a time limit still leaves what it measured."""
    print(f"\n== {name}", flush=True)
    t0 = time.perf_counter()
    try:
        results[name] = fn()
    except Exception:
        results[name] = {"error": traceback.format_exc()[-4000:]}
        print(results[name]["error"], file=sys.stderr, flush=True)
    print(f"== {name}: {time.perf_counter() - t0:.0f}s", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(results, indent=1))


def ratios(results: dict[str, Any]) -> list[tuple[str, float, str]]:
    """(what, value, target) of every headline ratio present. On a GPU: wall time. On a CPU every ratio is
    one of CPU seconds of the process and the children it reaped (bench/timing.py): on a shared machine
    wall time mostly measures the other jobs; the CPU sizes keep all work in-process, so none escapes."""
    out: list[tuple[str, float, str]] = []
    gpu = results["environment"]["device"].startswith("cuda")
    cpu = "" if gpu else "cpu_"
    per = "" if gpu else " (CPU s)"
    models = results.get("a_models", {})
    rate = "gflop_per_s" if gpu else "gflop_per_cpu_s"
    bare = models.get("bare", {}).get(rate)
    for entry, r in models.items():
        if entry != "bare" and rate in r and bare:
            target = f">= {TARGETS['flam_vs_bare']}" if entry == "flam" else "record"
            out.append((f"{entry} FLOP/s / bare stack FLOP/s{per}", r[rate] / bare, target))
    pix = results.get("b_cache_vs_pixel", {}).get("ratios", {})
    if pix:
        target = f">= {TARGETS['cache_vs_pixel']:g}"
        out.append(
            (f"training samples/s, token cache / pixel path{per}", pix[cpu + "train_cache_vs_pixel"], target)
        )
        out.append((f"data side only, cache / pixel{per}", pix[cpu + "data_cache_vs_pixel"], "record"))
    pre = results.get("c_precompute", {}).get("ratios", {})
    for key in (k for k in pre if k.startswith("precompute")):  # precompute<workers>_vs_encode
        workers = key.removeprefix("precompute").removesuffix("_vs_encode")
        target = f">= {TARGETS['precompute_vs_encode']}"
        out.append((f"precompute ({workers} loader workers) / in-memory encode{per}", pre[cpu + key], target))
    return out


def docs_kind(results: dict[str, Any]) -> str:
    """The docs section a run goes to: ``cuda`` or ``cpu`` at the device's default size, else with the size
    (``cpu-preset``), so that the tiny CPU run of the test suite never overwrites another size's figures."""
    kind = "cuda" if results["environment"]["device"].startswith("cuda") else "cpu"
    return kind if results["size"] == DEFAULT_SIZE[kind] else f"{kind}-{results['size']}"


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    gpu = env["device"].startswith("cuda")
    where = env.get("gpu") or f"CPU ({env['cpus']} cores, {env.get('torch_threads')} torch threads)"
    rate = "gflop_per_s" if gpu else "gflop_per_cpu_s"
    per = "s" if gpu else "CPU s"  # on a CPU the table is in CPU seconds, as the ratios (see ``ratios``)
    head = ["(a) model", f"samples/{per}", f"{'' if gpu else 'CPU '}ms/step", f"GFLOP/{per}", "vs bare"]
    head += ["graphs", "breaks", "eager ops/step"] + (["kernels/step"] if gpu else [])
    lines = [
        f"**{where}**, torch {env['torch']}, {env['date_utc']} UTC, `bench/gpu.py --size {results['size']}` "
        f"(compile: {results['compile']}, bf16: {gpu}; {results.get('total_s', 0):.0f}s in all).",
        "",
        "| " + " | ".join(head) + " |",
        "|---" + "|---:" * (len(head) - 1) + "|",
    ]
    models = results.get("a_models", {})
    bare = models.get("bare", {}).get(rate)
    for entry, r in models.items():
        if "error" in r:
            cells = [entry, f"failed: {r['error'].strip().splitlines()[-1][:80]}"] + [""] * (len(head) - 2)
        else:
            ms = r["ms_per_step"] if gpu else r["cpu_ms_per_step"]
            samples = r["samples_per_s"] * r["ms_per_step"] / ms  # the batch over the step's (CPU) seconds
            cells = [
                entry,
                f"{samples:,.1f}",
                f"{ms:,.2f}",
                f"{r[rate]:,.1f}",
                f"{r[rate] / bare:.2f}" if bare else "",
            ]
            cells += [str(r["graphs"]), str(r["graph_breaks"]), f"{r['eager_ops_per_step']:,}"]
            cells += [str(r.get("gpu_kernels_per_step") or "")] if gpu else []
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| ratio | value | target |", "|---|---:|---|"]
    lines += [f"| {what} | {value:.2f} | {target} |" for what, value, target in ratios(results)]
    run = results.get("d_training", {})
    if run.get("loss"):
        (s0, l0), (s1, l1) = run["loss"][0], run["loss"][-1]
        lines += [
            "",
            f"(d) FLAM through train/lam.py: loss {l0:.4g} at step {s0} -> {l1:.4g} at step {s1}, ended "
            f"after the checkpoint of step {run['resumed_at']} and resumed ({run['first_half_s']:.0f}s + "
            f"{run['second_half_s']:.0f}s with compilation and validation).",
        ]
    if results.get("failed"):
        lines += ["", f"Failed: {', '.join(results['failed'])} (tracebacks in gpu.json)."]
    return "\n".join(lines) + "\n"


def update_docs(path: Path, kind: str, text: str) -> None:
    """Put ``text`` between ``<!-- bench-gpu:KIND -->`` and ``<!-- /bench-gpu:KIND -->`` in ``path``
    (appended with its markers when they are missing)."""
    begin, end = f"<!-- bench-gpu:{kind} -->", f"<!-- /bench-gpu:{kind} -->"
    doc = path.read_text()
    block = f"{begin}\n{text}{end}"
    if begin in doc and end in doc:
        doc = doc[: doc.index(begin)] + block + doc[doc.index(end) + len(end) :]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(doc)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", choices=sorted(SIZES), help="default: full on a GPU, tiny on a CPU")
    p.add_argument("--models", nargs="+", help="entries of (a): bare, model names, name@compile-mode")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, help="default: on a GPU only")
    p.add_argument(
        "--parallel",
        action=argparse.BooleanOptionalAction,
        help="(a) every entry in a process of its own, compiled at once (default: on a GPU only)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads on a CPU (0: torch's default)")
    p.add_argument("--out", type=Path, default=REPO / "bench/out")
    p.add_argument(
        "--docs", type=Path, help="Markdown file whose bench-gpu section of this device kind to replace"
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary data folder (its path is printed)")
    p.add_argument(
        "--from-json",
        type=Path,
        help="measure nothing: render a gpu.json brought back from a device run into --docs (and print it)",
    )
    args = p.parse_args()
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        text = markdown(results)
        print(text)
        if args.docs:
            update_docs(args.docs, docs_kind(results), text)
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no GPU here: run with --device cpu (tiny sizes)")
    gpu = device.type == "cuda"
    if not gpu and args.threads:
        torch.set_num_threads(args.threads)  # several threads on a shared box spin-wait
    size = args.size or DEFAULT_SIZE[device.type]
    sizes = SIZES[size]
    compile = gpu if args.compile is None else args.compile
    entries = args.models or ["bare", *MODELS]
    if args.models is None and gpu and compile:
        entries += ["bare@reduce-overhead", "flam@reduce-overhead"]
    parallel = gpu if args.parallel is None else args.parallel

    started = time.perf_counter()
    results: dict[str, Any] = {
        "environment": environment(device),
        "size": size,
        "compile": compile,
        "targets": TARGETS,
    }
    print(json.dumps(results["environment"]), flush=True)
    root = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        cfg, split_dir = setup(sizes, root)
        opts = model_throughput.Options(compile, sizes.warmup, sizes.steps, sizes.repeats)
        run_section(
            "a_models",
            results,
            lambda: model_throughput.measure_all(
                entries, cfg, split_dir, device, opts, parallel, sizes.compile_deadline_s
            ),
            args.out,
        )
        flam_cfg = replace(cfg, model="flam")
        run_section(
            "b_cache_vs_pixel",
            results,
            lambda: train_throughput.measure(
                flam_cfg,
                split_dir,
                device,
                sizes.steps,
                sizes.data_batches,
                sizes.repeats,
                sizes.loader_workers,
                compile,
            ),
            args.out,
        )
        tokenizer, tokenizer_id = load_tokenizer(cfg.tokenizer_checkpoint, device)
        run_section(
            "c_precompute",
            results,
            lambda: precompute.measure(
                cfg, tokenizer, tokenizer_id, device, list(sizes.precompute_workers), sizes.repeats
            ),
            args.out,
        )
        run_section("d_training", results, lambda: training_run(cfg, sizes, root / "run", compile), args.out)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    results["total_s"] = round(time.perf_counter() - started, 1)

    print(f"\n== summary ({results['total_s']:.0f}s, {results['environment'].get('gpu', 'CPU')})")
    for what, value, target in ratios(results):
        print(f"  {what:<58} {value:8.2f}   target {target}")
    failed = [k for k, v in results.items() if isinstance(v, dict) and "error" in v]
    failed += [f"a_models/{k}" for k, v in results.get("a_models", {}).items() if "error" in v]
    results["failed"] = failed
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(results, indent=1))
    text = markdown(results)
    (args.out / "gpu.md").write_text(text)
    if args.docs:
        update_docs(args.docs, docs_kind(results), text)
    print(f"wrote {args.out / 'gpu.json'}, {args.out / 'gpu.md'}" + (f", {args.docs}" if args.docs else ""))
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
