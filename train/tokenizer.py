"""Train the per-dataset FSQ frame tokenizer on clip shards.

    torchrun --nproc_per_node=N -m train.tokenizer --config configs/multigrid.yaml [key=value ...]
    python -m train.tokenizer --config configs/demo.yaml tokenizer_train.steps=50      # one process, CPU ok

Reads clips with the streaming loader (endless, shuffled, split over ranks and workers), draws
``frames_per_clip`` frames from every clip, and minimises the pixel reconstruction loss of the
tokenizer (``tokenizer.recon_loss``: MSE by default, the paper's Eq. 1; no perceptual term, its weights
are not available offline). Writes to ``<run>/``: config.yaml, ckpt/ (whole state, atomic, last K,
``latest``), tb/ (TensorBoard: loss, PSNR, codebook usage, grad norm, lr, frames/s), images/ (originals
over reconstructions). A killed run resumes from ``ckpt/latest`` at the same step and data position.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from tqdm import tqdm

from model.fsq import code_counts, usage_from_counts
from model.tokenizer import Tokenizer, to_float
from shards.config import to_dict
from shards.integrity import check_shards, require_complete, shortfall
from shards.loader import ClipDataset, ClipLoader, ShardInfo, gather_states, list_shards
from train.common import (
    Checkpoints,
    DistInfo,
    all_reduce_mean,
    check_resume,
    cleanup_distributed,
    gather_rng_states,
    init_distributed,
    per_rank_batch,
    record_missing,
    restore_train_state,
    run_lock,
    seed_everything,
    train_state,
    warmup_cosine,
    wrap_for_training,
)
from train.config import Config, load_config, save_config
from train.visuals import TensorBoard, save_image_grid


def sample_frames(clips: torch.Tensor, frames_per_clip: int, generator: torch.Generator) -> torch.Tensor:
    """uint8 clips [B, T, H, W, C] -> uint8 frames [B * frames_per_clip, H, W, C], distinct within a clip."""
    b, t = clips.shape[:2]
    picks = torch.rand(b, t, generator=generator).argsort(dim=1)[:, :frames_per_clip]  # [B, F]
    return clips[torch.arange(b)[:, None], picks].flatten(0, 1)


@torch.no_grad()
def validate(model: Tokenizer, cfg: Config, dist_info: DistInfo, autocast) -> dict[str, float]:
    """Reconstruction PSNR/MSE on the first ``val_batches`` batches of the val split."""
    tc = cfg.tokenizer_train
    try:
        ds = ClipDataset(cfg.dataset_dir, "val", rank=dist_info.rank, world_size=dist_info.world_size)
    except ValueError:  # no val shards in a tiny dataset: nothing to report
        return {}
    loader = ClipLoader(ds, batch_size=max(1, tc.batch_size // dist_info.world_size // tc.frames_per_clip))
    model.eval()
    totals: dict[str, float] = {}
    n = 0
    for i, batch in enumerate(loader):
        if i >= tc.val_batches:
            break
        frames = to_float(batch["frames"].to(dist_info.device))  # [B, T, 3, H, W]
        with autocast():
            recon, _ = model(frames)
        _, metrics = model.reconstruction_loss(recon.float(), frames)
        for k, v in metrics.items():
            totals[k] = totals.get(k, 0.0) + float(v)
        n += 1
    model.train()
    return all_reduce_mean({f"val/{k}": v / n for k, v in totals.items()}, dist_info.device) if n else {}


# tokenizer_train keys a resume may change freely; other tokenizer_train and data changes are refused
# unless tokenizer_train.allow_config_change=true (the tokenizer section itself: always refused).
RESUME_FREE = {
    "tokenizer_train": {
        *("steps", "log_every", "image_every", "ckpt_every", "keep_last", "val_batches", "run_dir"),
        *("compile", "allow_partial", "allow_config_change"),
    },
    "data": {"root", "tokenizer", "num_workers", "verify_shards"},
}


def train_shards(cfg: Config, run_dir: Path, is_main: bool) -> list[ShardInfo]:
    """The train shards that are there at their manifest size (hashing the whole train split at every
    start would cost too much; precompute checks sha256). Missing or cut ones are refused unless
    tokenizer_train.allow_partial=true, which trains without them and records them in the run."""
    shards = list_shards(cfg.dataset_dir, "train")
    good, problems = check_shards(shards, verify=False)
    counts = {Path(s.path).stem: s.num_samples for s in shards}
    missing = shortfall(counts, {k: v for k, v in counts.items() if k not in problems}, problems)
    allow = cfg.tokenizer_train.allow_partial
    require_complete(missing, f"train shards of {cfg.dataset_dir}", "tokenizer_train.allow_partial", allow)
    if missing and is_main:
        record_missing(run_dir, missing)
    return good


def main(cfg: Config) -> Path:
    """Train under the run folder's lock: one job per run folder."""
    with run_lock(cfg.tokenizer_run_dir, "train/tokenizer.py"):
        return train(cfg)


def train(cfg: Config) -> Path:
    tc = cfg.tokenizer_train
    dist_info = init_distributed()
    device = dist_info.device
    seed_everything(tc.seed, dist_info.rank)
    run_dir = cfg.tokenizer_run_dir

    # Data: an endless shuffled clip stream per rank; each clip gives frames_per_clip frames.
    frames_per_rank = per_rank_batch(tc.batch_size, dist_info.world_size)
    if frames_per_rank % tc.frames_per_clip:
        raise ValueError(
            f"per-rank batch {frames_per_rank} frames is not a multiple of "
            f"frames_per_clip {tc.frames_per_clip}"
        )
    dataset = ClipDataset(
        train_shards(cfg, run_dir, dist_info.is_main),
        infinite=True,
        shuffle=True,
        buffer_size=cfg.data.shuffle_buffer,
        seed=tc.seed,
        rank=dist_info.rank,
        world_size=dist_info.world_size,
    )
    loader = ClipLoader(
        dataset, batch_size=frames_per_rank // tc.frames_per_clip, num_workers=cfg.data.num_workers
    )

    # Model, optimiser, schedule.
    model = Tokenizer(cfg.tokenizer).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, tc.warmup_steps, tc.steps)
    )
    use_bf16 = tc.bf16 and device.type == "cuda"

    def autocast():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)

    # Resume: the whole state, including where every rank's data stream was.
    ckpts = Checkpoints(run_dir, tc.keep_last)
    step = 0
    state = ckpts.load_latest()  # on the CPU: load_state_dict moves the weights, RNG must stay there
    if state is not None:
        if state["config"]["tokenizer"] != to_dict(cfg.tokenizer):
            raise ValueError(f"{ckpts.latest} holds a tokenizer with another config: use a new run_dir")
        check_resume(state, cfg, RESUME_FREE, "tokenizer_train", run_dir, dist_info.is_main)
        step = restore_train_state(state, model, optimizer, scheduler, dist_info.rank)
        dataset.load_state_dict(state["data"], strict=False, num_workers=cfg.data.num_workers)
    generator = torch.Generator().manual_seed(tc.seed * 7919 + dist_info.rank)  # which frames of a clip
    if state is not None:
        generator.set_state(state["rng_of_rank"]["frames"])
    if dist_info.is_main:
        save_config(cfg, run_dir / "config.yaml")

    train_model = wrap_for_training(model, dist_info, tc.compile)

    tb = TensorBoard(run_dir / "tb", enabled=dist_info.is_main)
    bar = tqdm(
        total=tc.steps, initial=step, desc="tokenizer", disable=not dist_info.is_main, dynamic_ncols=True
    )
    counts = torch.zeros(model.codebook_size, dtype=torch.int64, device=device)
    clock, frames_seen = time.perf_counter(), 0

    def save() -> None:
        data_states = gather_states(loader.state_dict())
        rngs = gather_rng_states({"frames": generator.get_state()})
        if dist_info.is_main:
            ckpts.save(
                train_state(
                    model,
                    optimizer,
                    scheduler,
                    step,
                    rng=rngs,
                    data=data_states,
                    config=to_dict(cfg),
                    tokenizer_config=to_dict(cfg.tokenizer),
                    kind="tokenizer",
                )
            )

    data_iter = iter(loader)
    while step < tc.steps:
        batch = next(data_iter)
        # [N, 1, 3, H, W]: N single frames, shaped as the tokenizer's [B, T, ...] clips
        frames = to_float(sample_frames(batch["frames"], tc.frames_per_clip, generator).to(device))[:, None]
        with autocast():
            recon, codes = train_model(frames)
        loss, metrics = model.reconstruction_loss(recon.float(), frames)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        frames_seen += frames.shape[0]
        counts += code_counts(codes.detach(), model.codebook_size)
        bar.update(1)

        if step % tc.log_every == 0 or step == tc.steps:
            if dist_info.distributed:
                torch.distributed.all_reduce(counts)
            usage = usage_from_counts(counts)
            elapsed = time.perf_counter() - clock
            scalars = all_reduce_mean(
                {**{f"train/{k}": float(v) for k, v in metrics.items()}, "train/grad_norm": float(grad_norm)},
                device,
            )
            scalars.update(
                {
                    "codebook/used_fraction": float(usage["used_fraction"]),
                    "codebook/perplexity": float(usage["perplexity"]),
                    "lr": scheduler.get_last_lr()[0],
                    "perf/frames_per_s": frames_seen * dist_info.world_size / elapsed,
                    "data/skipped": float(dataset.stats.get("skipped", 0)),
                }
            )
            tb.scalars(scalars, step)
            bar.set_postfix(
                loss=f"{scalars['train/loss']:.4f}",
                psnr=f"{scalars['train/psnr']:.1f}",
                codes=f"{usage['used_fraction']:.2f}",
            )
            counts.zero_()
            clock, frames_seen = time.perf_counter(), 0
        if dist_info.is_main and (step % tc.image_every == 0 or step == tc.steps):
            with torch.no_grad():
                shown = frames[:8, 0]
                grid = torch.cat([shown, recon[:8, 0].float().clamp(-1, 1)]).detach().cpu()
            path = save_image_grid(grid, run_dir / "images" / f"step-{step:07d}.png", rows=2)
            tb.image("reconstruction", path, step)
        if step % tc.ckpt_every == 0 or step == tc.steps:
            val = validate(model, cfg, dist_info, autocast)
            tb.scalars(val, step)
            save()

    bar.close()
    tb.close()
    cleanup_distributed()
    return ckpts.latest


def parse_args(argv: list[str] | None = None) -> tuple[str, list[str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a preset in configs/, e.g. configs/multigrid.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. tokenizer_train.steps=200")
    args = p.parse_args(argv)
    return args.config, args.overrides


if __name__ == "__main__":
    config_path, overrides = parse_args()
    main(load_config(config_path, overrides))
