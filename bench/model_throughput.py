"""Training throughput of every world model next to a bare transformer stack of the same width on the same
tokens (section (a) of bench/gpu.py): samples/s and achieved FLOP/s, measured in the same run.

Each entry is one model of ``model.zoo.MODELS`` (or ``bare``, ``BareStack`` below) stepped by train/lam.py's
``train_step`` on batches of the token cache, with bf16 autocast on GPU and, when asked, ``torch.compile``
(``mode`` after an ``@``: ``flam@reduce-overhead`` captures CUDA graphs). FLOPs are the matmul and attention
FLOPs of one training step (forward + backward) counted by ``torch.utils.flop_counter`` on the eager model;
achieved FLOP/s = those FLOPs / the median step time. The ratio to ``bare`` is the headline (DESIGN.md
section 9: FLAM >= 0.8 of the bare compiled stack on an H100/H200).

Compiling every model takes minutes on a GPU host, so with ``parallel`` every entry runs in a process of its
own: all compile and warm up at once, then they measure one after another while the others wait (no two
entries ever time on the device together); an entry not ready by the deadline is stopped and reported.
On a CPU the step time is also taken in CPU seconds of the process (``cpu_ms_per_step``): on a shared machine
it moves less than wall time, and the CPU ratios use it.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from bench.timing import sync
from bench.train_throughput import CacheBatches, Trainer
from model.base import TokenWorldModel
from model.blocks import TransformerLayer
from model.config import LAMConfig
from train.common import load_tokenizer
from train.config import Config

Batch = dict[str, Tensor]


class BareStack(TokenWorldModel):
    """The hardware reference: features [B, T, N, F] -> embedding -> ``depth`` pre-norm transformer layers
    over each frame's N tokens (width D, ``model/blocks.py``) -> head; loss = MSE of the next frame's
    features, predicted from frames 0..T-2 (the B*(T-1)*N tokens every world model reads). Nothing small:
    no slots, no per-slot stacks, one self-attention over N tokens per frame."""

    def __init__(self, cfg: LAMConfig, depth: int) -> None:
        super().__init__(cfg)
        self.layers = nn.ModuleList(TransformerLayer(cfg.dim, cfg.num_heads) for _ in range(depth))

    def forward(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        features = batch["features"]
        b = features.shape[0]
        current = rearrange(features[:, :-1], "b t n f -> (b t) n f")
        x = self._embed(current)  # [(B T-1), N, D]
        for layer in self.layers:
            x = layer(x)
        pred = rearrange(self._predict_features(current, x), "(b t) n f -> b t n f", b=b)
        errors = self.prediction_errors(pred, features)
        return errors["pred_mse"], {"loss": errors["pred_mse"].detach()}


@dataclass(frozen=True)
class Options:
    """How every entry is measured."""

    compile: bool
    warmup: int  # untimed steps first (compilation; both Genie graphs: step 0 restarts, 1.. do not)
    steps: int  # timed steps per repeat
    repeats: int  # the median over repeats is reported
    batches: int = 4  # distinct cache batches held on the device and cycled


def split_entry(entry: str) -> tuple[str, str | None]:
    """``"flam@reduce-overhead"`` -> ("flam", "reduce-overhead"); ``"flam"`` -> ("flam", None)."""
    name, _, mode = entry.partition("@")
    return name, mode or None


class FlopCount(TorchDispatchMode):
    """Matmul, convolution and attention FLOPs of everything run inside, by ``torch.utils.flop_counter``'s
    formulas (plus the CPU flash-attention kernels, which torch does not list). Not FlopCounterMode itself:
    its per-module tracking fails on modules run under no_grad (PlaySlot's frozen slots)."""

    def __init__(self) -> None:
        from torch.utils import flop_counter as fc

        super().__init__()
        self.total, self.ops = 0, 0  # FLOPs; aten ops run (each one kernel launch or more on a GPU, eager)
        self.formulas = dict(fc.flop_registry)
        aten = torch.ops.aten
        if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
            self.formulas[aten._scaled_dot_product_flash_attention_for_cpu] = fc.shape_wrapper(
                lambda q, k, v, *args, out_shape=None, **kwargs: fc.sdpa_flop_count(q, k, v)
            )
            self.formulas[aten._scaled_dot_product_flash_attention_for_cpu_backward] = fc.shape_wrapper(
                lambda g, q, k, v, *args, out_shape=None, **kwargs: fc.sdpa_backward_flop_count(g, q, k, v)
            )

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops += 1
        formula = self.formulas.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


class Entry:
    """One entry's trainer and device-resident batches; ``warm_up`` then ``measure``."""

    def __init__(self, entry: str, cfg: Config, split_dir: Path, device: torch.device, opts: Options) -> None:
        name, mode = split_entry(entry)
        self.entry, self.opts, self.device = entry, opts, device
        cfg = replace(cfg, model="flam" if name == "bare" else name)
        model = BareStack(cfg.lam, cfg.lam.depth) if name == "bare" else None
        self.trainer = Trainer(cfg, device, compile=False, model=model)
        if opts.compile:
            self.trainer.train_model = torch.compile(self.trainer.model, mode=mode)
        tokenizer, _ = load_tokenizer(cfg.tokenizer_checkpoint, device)  # codes -> features
        cache = CacheBatches(cfg, split_dir, tokenizer, self.trainer)
        self.batches = []
        for k in range(opts.batches):  # the first global batches of the cache, with their step's noise
            self.trainer.step = k
            self.batches.append(cache.next())
        self.trainer.step = 0
        self.windows = len(cache.windows)

    def step(self) -> None:
        t = self.trainer
        t.train_step(self.batches[t.step % len(self.batches)])

    def warm_up(self) -> dict[str, Any]:
        """Untimed steps (compilation); how many graphs dynamo made of the model, and its graph breaks."""
        from torch._dynamo.utils import counters

        counters.clear()
        t0 = time.perf_counter()
        for _ in range(self.opts.warmup):
            self.step()
        sync(self.device)
        return {
            "warmup_s": round(time.perf_counter() - t0, 2),
            "graphs": counters["stats"]["unique_graphs"],
            "graph_breaks": sum(counters["graph_break"].values()),
        }

    def count_kernels(self) -> int | None:
        """GPU kernels launched by one training step (torch.profiler), None on a CPU: at a few microseconds
        per launch, what bounds a small model's step from below."""
        if self.device.type != "cuda":
            return None
        from torch.profiler import ProfilerActivity, profile

        try:
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                self.step()
                sync(self.device)
            return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
        except RuntimeError as err:  # a profiler that cannot start (no CUPTI): the count is left out
            print(f"  {self.entry}: no kernel count ({err})", flush=True)
            return None

    def count_flops(self) -> tuple[int, int]:
        """(matmul/attention FLOPs, aten ops) of a training step's forward + backward, on the eager model."""
        t = self.trainer
        with FlopCount() as counter:
            t.model.begin_step(t.step)
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=t.use_bf16):
                loss, _ = t.model(self.batches[0])
            loss.backward()
        t.optimizer.zero_grad(set_to_none=True)
        return counter.total, counter.ops

    def measure(self) -> dict[str, Any]:
        times, cpu_times = [], []
        for _ in range(self.opts.repeats):
            sync(self.device)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(self.opts.steps):
                self.step()
            sync(self.device)
            times.append((time.perf_counter() - t0) / self.opts.steps)
            cpu_times.append((time.process_time() - c0) / self.opts.steps)
        kernels = self.count_kernels()
        flops, ops = self.count_flops()
        step_s, cpu_s = statistics.median(times), statistics.median(cpu_times)
        batch = self.trainer.cfg.lam_train.batch_size
        return {
            "samples_per_s": round(batch / step_s, 2),
            "ms_per_step": round(1000 * step_s, 3),
            "cpu_ms_per_step": round(1000 * cpu_s, 3),
            "flop_per_step": flops,
            "eager_ops_per_step": ops,
            "gpu_kernels_per_step": kernels,
            "gflop_per_s": round(flops / step_s / 1e9, 3),
            "gflop_per_cpu_s": round(flops / max(cpu_s, 1e-9) / 1e9, 3),
            "step_ms_runs": [round(1000 * t, 3) for t in times],
            "parameters": sum(p.numel() for p in self.trainer.model.parameters()),
        }


def measure_entry(entry: str, cfg: Config, split_dir: Path, device: torch.device, opts: Options) -> dict:
    """Build, warm up and measure one entry in this process."""
    e = Entry(entry, cfg, split_dir, device, opts)
    return {**e.warm_up(), **e.measure(), "compiled": opts.compile}


def _worker(conn, entry: str, cfg: Config, split_dir: Path, device: str, opts: Options, threads: int) -> None:
    """A process of its own: build and warm up (compile) at once with the others, report "ready", then
    measure when told and report the result."""
    try:
        import torch._inductor.config as inductor_config

        inductor_config.compile_threads = threads  # the host's cores shared by every compiling entry
        e = Entry(entry, cfg, split_dir, torch.device(device), opts)
        warm = e.warm_up()
        if e.device.type == "cuda":  # hand cached blocks back while the other entries still compile
            torch.cuda.empty_cache()
        conn.send(("ready", warm))
        if conn.recv() != "go":
            return
        conn.send(("done", {**warm, **e.measure(), "compiled": opts.compile}))
    except Exception:  # a one-shot device run: report any failure with its traceback, never hang the parent
        conn.send(("error", traceback.format_exc()[-3000:]))


def measure_all(
    entries: list[str],
    cfg: Config,
    split_dir: Path,
    device: torch.device,
    opts: Options,
    parallel: bool,
    deadline_s: float,
) -> dict[str, dict]:
    """Every entry's results ({"error": ...} for one that failed or was not ready by ``deadline_s`` seconds
    after the start): one after another in this process, or with ``parallel`` in processes of their own."""
    results: dict[str, dict] = {}
    if not parallel:
        for entry in entries:
            print(f"  {entry} ...", flush=True)
            try:
                results[entry] = measure_entry(entry, cfg, split_dir, device, opts)
            except Exception:  # recorded and printed: the other entries still run
                results[entry] = {"error": traceback.format_exc()[-3000:]}
            report(entry, results[entry])
        return results
    ctx = mp.get_context("spawn")
    threads = max(1, (mp.cpu_count() or 2) // len(entries))
    workers = {}
    for entry in entries:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, entry, cfg, split_dir, str(device), opts, threads))
        proc.start()
        workers[entry] = (proc, parent)
    start, ready = time.perf_counter(), {}
    print(f"  compiling {len(entries)} entries in parallel (deadline {deadline_s:.0f}s) ...", flush=True)
    for entry, (proc, conn) in workers.items():
        left = deadline_s - (time.perf_counter() - start)
        kind, payload = _receive(conn, left, f"not compiled and warmed up within {deadline_s:.0f}s: stopped")
        if kind == "ready":
            ready[entry] = payload
            print(f"  {entry} ready after {time.perf_counter() - start:.0f}s", flush=True)
            continue
        results[entry] = {"error": payload}
        report(entry, results[entry])
        proc.kill()
    for entry in ready:  # one at a time: nothing else runs on the device meanwhile
        proc, conn = workers[entry]
        conn.send("go")
        kind, payload = _receive(conn, 600, "no result within 600s")
        results[entry] = payload if kind == "done" else {"error": payload}
        report(entry, results[entry])
    for proc, _ in workers.values():
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
    return {entry: results[entry] for entry in entries}


def _receive(conn, timeout: float, late: str) -> tuple[str, Any]:
    """A worker's next message, or ("error", why) when it is late or its process ended without one."""
    try:
        if timeout > 0 and conn.poll(timeout):
            return conn.recv()
    except (EOFError, OSError):
        return "error", "the worker process ended without a result (crashed or killed)"
    return "error", late


def report(entry: str, r: dict) -> None:
    if "error" in r:
        print(f"  {entry:>24}: FAILED {r['error'].strip().splitlines()[-1]}", flush=True)
    else:
        print(
            f"  {entry:>24}: {r['samples_per_s']:10,.1f} samples/s  {r['ms_per_step']:9.2f} ms/step  "
            f"{r['gflop_per_s']:12,.1f} GFLOP/s  graphs {r['graphs']} breaks {r['graph_breaks']}  "
            f"(warm-up {r['warmup_s']:.1f}s)",
            flush=True,
        )
