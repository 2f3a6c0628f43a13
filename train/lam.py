"""Train FLAM (or a baseline) on cached tokens.

    torchrun --nproc_per_node=8 -m train.lam --config configs/multigrid.yaml
    torchrun --nnodes=4 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HEAD:29500 \\
        -m train.lam --config configs/nuplan.yaml
    python -m train.lam --config configs/multigrid.yaml lam_train.steps=200 lam.num_slots=8   # 1 process

Reads windows of cached FSQ codes (``shards/tokens.py``: memory-mapped, no video decode, no encoder),
maps them to the exact FSQ vectors and trains the model picked from ``model.zoo.MODELS`` by ``model=``.
The global batch is the knob: every step consumes the same global batch of windows whatever the number
of ranks (see ``GlobalBatches``), so runs resume on another world size. Writes ``<run>/``: config.yaml,
ckpt/ (whole state, atomic, last K, ``latest``; resumed automatically, also after a torchrun elastic
restart), tb/ (loss, KL per slot, slot usage, grad norm, lr, samples/s, val rollout PSNR), videos/
(ground truth | rollout GIFs from the periodic validation).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from tqdm import tqdm

from model.base import TokenWorldModel
from model.config import LAMConfig
from model.tokenizer import Tokenizer
from model.zoo import build_model
from shards.config import from_dict, to_dict
from shards.tokens import TokenCache, cache_dir, file_id, has_index, manifest_sha256, open_checked
from train.batches import GlobalBatches, TokenWindows, collate, to_model_batch
from train.common import (
    Checkpoints,
    all_reduce_mean,
    check_resume,
    cleanup_distributed,
    gather_rng_states,
    init_distributed,
    load_tokenizer,
    per_rank_batch,
    record_missing,
    restore_train_state,
    run_lock,
    seed_everything,
    train_state,
    warmup_cosine,
    wrap_for_training,
)
from train.config import Config, check_stages, load_config, save_config, upgrade_config_dict, with_token_shape
from train.eval.rollout import evenly_spaced
from train.eval.scoring import Scorer, score_rollouts
from train.visuals import TensorBoard, video_grid, write_gif


def step_noise(cfg: Config, step: int, shape: tuple[int, ...], rank: int, world_size: int) -> torch.Tensor:
    """Reparameterisation noise of this rank's slice of the global batch, drawn per global batch from
    (seed, step): the same numbers whatever the world size (and on resume)."""
    g = torch.Generator().manual_seed(cfg.lam_train.seed * 1_000_003 + step)
    full = torch.randn((cfg.lam_train.batch_size, *shape[1:]), generator=g)
    per_rank = cfg.lam_train.batch_size // world_size
    return full[rank * per_rank : (rank + 1) * per_rank]


def train_step(
    train_model: torch.nn.Module,
    model: TokenWorldModel,
    batch: dict[str, torch.Tensor],
    step: int,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    grad_clip: float,
    bf16: bool,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One optimiser step of global step ``step`` -> (detached metrics, grad norm). ``train_model`` is
    ``model`` as ``wrap_for_training`` returned it (DDP and/or compiled): ``begin_step`` goes to the plain
    model, outside the compiled region; bf16 autocast around the forward only (the FSQ/VQ parts keep fp32)."""
    model.begin_step(step)
    device_type = batch["features"].device.type
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=bf16):
        loss, metrics = train_model(batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    return metrics, grad_norm


def latent_inputs(
    cfg: Config, model: TokenWorldModel, features: torch.Tensor, step: int, rank: int, world_size: int
) -> dict[str, torch.Tensor]:
    """The step's latent inputs: ``noise`` (models with a sampled latent) and ``kl_weight``, with the same
    keys, shapes and dtypes at every step (scaled by ``latent_warmup``), so a compiled model never
    recompiles when the warm-up ends."""
    noise_scale, kl_weight = latent_warmup(step, cfg.lam_train.latent_warmup_steps)
    out = {"kl_weight": torch.tensor(kl_weight, dtype=torch.float32, device=features.device)}
    noise_shape = model.noise_shape(features)
    if noise_shape is not None:
        noise = step_noise(cfg, step, noise_shape, rank, world_size)
        out["noise"] = (noise_scale * noise).to(features.device)
    return out


def latent_warmup(step: int, warmup: int) -> tuple[float, float]:
    """(noise scale, KL weight) at ``step`` for ``lam_train.latent_warmup_steps = warmup``: (0, 0) for the
    first ``warmup`` steps (z is the posterior mean: a deterministic code the dynamics can start using), then
    noise on and the KL weight ramping linearly to 1 over the next ``warmup`` steps; (1, 1) when warmup=0.

    Why: at CPU scale the IDM gets almost no gradient until the factorizer and aggregator can render a
    change, so its posterior is pushed to the prior by the KL term alone (at full speed: Adam normalises
    that tiny gradient), z becomes pure noise and the forward model learns to ignore it. Latents then stay
    unused for most of a short run (KL annealing, Bowman et al. 2016, is the standard remedy)."""
    if warmup <= 0 or step >= 2 * warmup:
        return 1.0, 1.0
    if step < warmup:
        return 0.0, 0.0
    return 1.0, (step - warmup) / warmup


@torch.no_grad()
def validate(
    model, tokenizer: Tokenizer, cfg: Config, tokenizer_id: str, device, video_dir: Path, step: int
) -> dict[str, float]:
    """Rollouts of ``lam_train.rollout_steps`` frames from one on ``val_clips`` val windows of the token
    cache, scored like evaluation (``train/eval/scoring.py``) but against the decoded ground-truth codes:
    the cache holds no pixels (the tokenizer's own error against real pixels is precompute's Recon report).
    PSNR/SSIM, the copy-the-first-frame floor and PSNR per step, plus a ground truth | rollout GIF in
    ``video_dir``; {} when there are no val windows."""
    lt = cfg.lam_train
    split_dir = cache_dir(cfg.data.root, cfg.data.dataset, tokenizer_id, "val")
    if not has_index(split_dir):
        return {}
    try:
        windows = TokenWindows(TokenCache(split_dir), lt.rollout_steps + 1, lt.rollout_steps + 1)
    except ValueError:
        return {}
    items = [windows[i] for i in evenly_spaced(len(windows), lt.val_clips)]
    batch = to_model_batch(collate(items), tokenizer, device)
    was_training = model.training
    model.eval()
    scorer = Scorer(device)
    rows = score_rollouts(
        scorer, tokenizer, batch["features"], 1, {"model": model}, None, batch.get("actions")
    )
    model.train(was_training)
    psnr, ssim = scorer.frame_scores("model")["psnr"], scorer.frame_scores("model")["ssim"]  # [B, n]
    scores = {
        "val/rollout_psnr": float(psnr.mean()),
        "val/rollout_ssim": float(ssim.mean()),
        "val/copy_first_psnr": float(scorer.frame_scores("Copy")["psnr"].mean()),
    }
    scores.update({f"val_psnr_by_step/{i + 1}": float(v) for i, v in enumerate(psnr.mean(0))})
    write_gif(video_grid([rows["Recon"][:4], rows["model"][:4]]), video_dir / f"step-{step:07d}.gif")
    return scores


# lam_train keys a resume may change freely; every other lam_train (and data.dataset) change is refused
# unless lam_train.allow_config_change=true. lam/model changes are always refused (another model).
RESUME_FREE = {
    "lam_train": {
        *("steps", "log_every", "val_every", "val_clips", "rollout_steps", "ckpt_every", "keep_last"),
        *("run_dir", "compile", "allow_partial", "allow_config_change"),
    },
    # data.tokenizer is a path: the tokenizer id itself is checked on resume (a new one is refused)
    "data": {"root", "tokenizer", "shuffle_buffer", "num_workers", "verify_shards"},
}


def main(cfg: Config, stop_after: int | None = None) -> Path:
    """Train under the run folder's lock: one job per run folder. ``stop_after``: end the job after the
    checkpoint of that step, as an interruption would (bench/gpu.py resumes it in the same process)."""
    with run_lock(cfg.lam_run_dir, f"train/lam.py model={cfg.model}"):
        return train(cfg, stop_after)


def train(cfg: Config, stop_after: int | None = None) -> Path:
    check_stages(cfg)
    lt = cfg.lam_train
    dist_info = init_distributed()
    device, rank, world = dist_info.device, dist_info.rank, dist_info.world_size
    seed_everything(lt.seed, rank)
    run_dir = cfg.lam_run_dir

    # Data: the token cache of this dataset made by this tokenizer, refused when stale.
    tokenizer_id = file_id(cfg.tokenizer_checkpoint)
    manifest_hash = manifest_sha256(cfg.dataset_dir)
    cache = open_checked(
        cache_dir(cfg.data.root, cfg.data.dataset, tokenizer_id, "train"),
        tokenizer_id,
        manifest_hash,
        allow_partial=lt.allow_partial,
        opt_in="lam_train.allow_partial",
        verify=dist_info.is_main,  # checksums of every part, once per job
    )
    if cache.missing and dist_info.is_main:
        record_missing(run_dir, cache.missing)
    windows = TokenWindows(cache, lt.window, lt.window_stride)
    batches = GlobalBatches(len(windows), lt.batch_size, lt.seed)
    per_rank_batch(lt.batch_size, world)
    # The frozen tokenizer: codes -> features for every batch, and the decoder of the validation rollouts.
    tokenizer, _ = load_tokenizer(cfg.tokenizer_checkpoint, device)
    h, w = cache.info.grid
    cfg = with_token_shape(cfg, h * w, len(cache.info.levels))  # N and F as the cache holds them

    model = build_model(cfg.model, cfg.lam).to(device)
    if model.needs_actions and "actions" not in windows[0]:
        raise ValueError(
            f"model={cfg.model} trains on ground-truth actions, and dataset {cfg.data.dataset} has none in "
            "its token cache (nuPlan has no actions: the World Model baseline is for the simulators only)"
        )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=lt.lr, betas=tuple(lt.betas), weight_decay=lt.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, lt.warmup_steps, lt.steps)
    )

    # Resume: model, optimiser, schedule, step, RNG; the data position is the step (GlobalBatches).
    ckpts = Checkpoints(run_dir, lt.keep_last)
    step = 0
    state = ckpts.load_latest()  # on the CPU: load_state_dict moves the weights, RNG must stay there
    if state is not None:
        state["config"] = upgrade_config_dict(state["config"])
        if state["tokenizer_id"] != tokenizer_id:
            raise ValueError(
                f"{ckpts.latest} was trained on tokens of tokenizer {state['tokenizer_id']}, this run uses "
                f"{tokenizer_id}: start a new run_dir (lam_train.run_dir=...)"
            )
        saved_lam = to_dict(from_dict(LAMConfig, state["config"]["lam"]))  # defaults for keys added since
        if saved_lam != to_dict(cfg.lam) or state["config"]["model"] != cfg.model:
            raise ValueError(f"{ckpts.latest} holds a model with another config: use a new lam_train.run_dir")
        check_resume(state, cfg, RESUME_FREE, "lam_train", run_dir, dist_info.is_main)
        step = restore_train_state(state, model, optimizer, scheduler, rank)
    if dist_info.is_main:
        save_config(cfg, run_dir / "config.yaml")

    train_model = wrap_for_training(model, dist_info, lt.compile)
    use_bf16 = lt.bf16 and device.type == "cuda"

    tb = TensorBoard(run_dir / "tb", enabled=dist_info.is_main)
    bar = tqdm(
        total=lt.steps,
        initial=step,
        desc=f"{cfg.model} {cfg.data.dataset}",
        disable=not dist_info.is_main,
        dynamic_ncols=True,
    )
    clock, seen = time.perf_counter(), 0

    def save() -> None:
        rngs = gather_rng_states()
        if dist_info.is_main:
            data = {"global_samples": step * lt.batch_size, "seed": lt.seed, "missing": cache.missing}
            ckpts.save(
                train_state(
                    model,
                    optimizer,
                    scheduler,
                    step,
                    rng=rngs,
                    data=data,
                    config=to_dict(cfg),
                    tokenizer_id=tokenizer_id,
                    kind="lam",
                )
            )

    while step < lt.steps:
        items = [windows[int(i)] for i in batches.indices(step, rank, world)]
        batch = to_model_batch(collate(items), tokenizer, device, check_codes=False)  # features [b, T, N, F]
        batch.update(latent_inputs(cfg, model, batch["features"], step, rank, world))
        metrics, grad_norm = train_step(
            train_model, model, batch, step, optimizer, scheduler, lt.grad_clip, use_bf16
        )
        step += 1
        seen += lt.batch_size
        bar.update(1)

        if step % lt.log_every == 0 or step == lt.steps:
            scalars = {f"train/{k}": float(v) for k, v in metrics.items() if v.ndim == 0}
            scalars["train/grad_norm"] = float(grad_norm)
            scalars = all_reduce_mean(scalars, device)
            for name in ("kl_per_slot", "slot_usage"):  # per-slot vectors of the slot models
                if name in metrics:
                    scalars.update({f"{name}/slot{k}": float(v) for k, v in enumerate(metrics[name])})
            scalars["lr"] = scheduler.get_last_lr()[0]
            scalars["perf/samples_per_s"] = seen / (time.perf_counter() - clock)
            tb.scalars(scalars, step)
            bar.set_postfix(loss=f"{scalars['train/loss']:.4g}", kl=f"{scalars.get('train/kl', 0):.3g}")
            clock, seen = time.perf_counter(), 0
        if dist_info.is_main and (step % lt.val_every == 0 or step == lt.steps):
            val = validate(model, tokenizer, cfg, tokenizer_id, device, run_dir / "videos", step)
            tb.scalars(val, step)
        if step % lt.ckpt_every == 0 or step in (lt.steps, stop_after):
            save()
        if step == stop_after:
            break

    bar.close()
    tb.close()
    cleanup_distributed()
    return ckpts.latest


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a preset in configs/, e.g. configs/multigrid.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. lam_train.steps=200 model=flam")
    args = p.parse_args()
    main(load_config(args.config, args.overrides))
