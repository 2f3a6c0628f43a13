"""Train FLAM (or a baseline) on cached tokens.

    torchrun --nproc_per_node=8 train/lam.py --config configs/multigrid.yaml
    torchrun --nnodes=4 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HEAD:29500 \\
        train/lam.py --config configs/nuplan.yaml
    python train/lam.py --config configs/multigrid.yaml lam_train.steps=200 lam.num_slots=8   # 1 process

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
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # torchrun and `python train/lam.py` run this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from tqdm import tqdm

from model.flam import LAMConfig
from model.fsq import FSQ
from model.zoo import build_model
from shards.config import from_dict, to_dict
from shards.tokens import TokenWindows, cache_dir, file_id, manifest_sha256, open_checked
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
from train.config import Config, load_config, save_config
from train.rollouts import rollout_validation
from train.visuals import TensorBoard


class GlobalBatches:
    """Deterministic global batches of window indices, independent of the number of ranks.

    Epoch e is a permutation of all windows seeded by (seed, e), cut into global batches of B (the
    tail shorter than B is dropped). Step s takes global batch s; rank r takes its contiguous slice
    [r * B/W, (r+1) * B/W). The union over ranks is the same for any world size W, so a run resumes
    on another number of ranks, and W ranks compute the same step as one process with batch B.
    """

    def __init__(self, num_items: int, global_batch: int, seed: int) -> None:
        if num_items < global_batch:
            raise ValueError(
                f"the token cache holds {num_items} training windows, fewer than one global batch of "
                f"{global_batch}: ingest more episodes or lower lam_train.batch_size"
            )
        self.num_items, self.global_batch, self.seed = num_items, global_batch, seed
        self.steps_per_epoch = num_items // global_batch
        self._epoch, self._perm = -1, np.zeros(0, np.int64)

    def indices(self, step: int, rank: int, world_size: int) -> np.ndarray:
        epoch, j = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._perm = (
                epoch,
                np.random.default_rng([self.seed, epoch]).permutation(self.num_items),
            )
        per_rank = self.global_batch // world_size
        start = j * self.global_batch + rank * per_rank
        return self._perm[start : start + per_rank]


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


def to_features(codes: torch.Tensor, fsq: FSQ) -> torch.Tensor:
    """int codes [B, T, h, w] -> exact FSQ vectors [B, T, N, F] (N = h * w tokens)."""
    return fsq.indices_to_codes(codes).flatten(2, 3)


def step_noise(cfg: Config, step: int, shape: tuple[int, ...], rank: int, world_size: int) -> torch.Tensor:
    """Reparameterisation noise of this rank's slice of the global batch, drawn per global batch from
    (seed, step): the same numbers whatever the world size (and on resume)."""
    g = torch.Generator().manual_seed(cfg.lam_train.seed * 1_000_003 + step)
    full = torch.randn((cfg.lam_train.batch_size, *shape[1:]), generator=g)
    per_rank = cfg.lam_train.batch_size // world_size
    return full[rank * per_rank : (rank + 1) * per_rank]


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


# lam_train keys a resume may change freely; every other lam_train (and data.dataset) change is refused
# unless lam_train.allow_config_change=true. lam/model changes are always refused (another model).
RESUME_FREE = {
    "lam_train": {
        *("steps", "log_every", "val_every", "val_clips", "rollout_steps", "ckpt_every", "keep_last"),
        *("run_dir", "tokenizer", "compile", "allow_partial", "allow_config_change"),
    },
    "data": {"root", "shuffle_buffer", "num_workers", "verify_shards"},
}


def main(cfg: Config) -> Path:
    """Train under the run folder's lock: one job per run folder."""
    with run_lock(cfg.lam_run_dir, f"train/lam.py model={cfg.model}"):
        return train(cfg)


def train(cfg: Config) -> Path:
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
    fsq = FSQ(cache.info.levels).to(device)
    h, w = cache.info.grid
    if (cfg.lam.num_tokens, cfg.lam.feature_dim) != (h * w, len(cache.info.levels)):
        raise ValueError(
            f"lam.num_tokens={cfg.lam.num_tokens} / lam.feature_dim={cfg.lam.feature_dim} do not match the "
            f"token cache ({h}x{w} tokens of {len(cache.info.levels)} FSQ dims): fix the config preset"
        )

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
    tokenizer = None  # the frozen decoder, loaded at the first validation

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
        batch = {k: v.to(device, non_blocking=True) for k, v in collate(items).items()}
        batch["features"] = to_features(batch.pop("codes"), fsq)  # [b, T, N, F]
        noise_shape = model.noise_shape(batch["features"])
        noise_scale, kl_weight = latent_warmup(step, lt.latent_warmup_steps)
        if noise_shape is not None:
            batch["noise"] = (noise_scale * step_noise(cfg, step, noise_shape, rank, world)).to(device)
        if kl_weight < 1.0:
            batch["kl_weight"] = torch.tensor(kl_weight, device=device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss, metrics = train_model(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), lt.grad_clip)
        optimizer.step()
        scheduler.step()
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
            if tokenizer is None:
                tokenizer, _ = load_tokenizer(cfg.tokenizer_checkpoint, device)
            val = rollout_validation(
                model, tokenizer, fsq, cfg, tokenizer_id, device, run_dir / "videos", step
            )
            tb.scalars(val, step)
        if step % lt.ckpt_every == 0 or step == lt.steps:
            save()

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
