"""Train a LAWM-style world model (``model/lawm.py``) on every window of the token cache, with actions on the
labelled episodes only; load one back from its checkpoint.

The world model's sizes and schedule are ``lam`` / ``lam_train`` (AdamW, warmup + cosine, gradient clipping,
the latent warm-up of ``train/lam.py``); the encoder and loss weights are ``lawm.encoder`` / ``lawm.loss``.
Batches, reparameterisation noise and the encoder draws are functions of (seed, step), so a killed run
resumes from its last checkpoint onto the same sequence. One process (CPU or one GPU): these runs are small;
multi-GPU training of the world model itself is ``train/lam.py``'s job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from model.lawm import LatentActionWorldModel
from model.tokenizer import Tokenizer
from model.zoo import build_model
from shards.config import from_dict, to_dict
from shards.tokens import TokenCache
from train.batches import TokenWindows, collate, to_model_batch
from train.common import (
    Checkpoints,
    load_checkpoint,
    restore_train_state,
    rng_state,
    train_state,
    warmup_cosine,
)
from train.config import Config, with_token_shape
from train.lam import latent_warmup
from train.lawm_data import clip_episodes

NUM_ACTIONS = 15  # every Procgen game has the same 15 key combos


def build_lawm(cfg: Config, model_name: str) -> LatentActionWorldModel:
    return LatentActionWorldModel(
        build_model(model_name, cfg.lam), NUM_ACTIONS, cfg.lawm.encoder, cfg.lawm.loss
    )


def identity(cfg: Config, model_name: str, cache: TokenCache, labelled: np.ndarray) -> dict[str, Any]:
    """What a finished run must match to be reused: model, sizes, schedule, data and labelled episodes."""
    free = ("run_dir", "log_every", "tokenizer", "ckpt_every", "keep_last", "val_every", "val_clips")
    lt = {k: v for k, v in to_dict(cfg.lam_train).items() if k not in free}
    return {
        "model": model_name,
        "lam": to_dict(cfg.lam),
        "lam_train": lt,
        "encoder": to_dict(cfg.lawm.encoder),
        "loss": to_dict(cfg.lawm.loss),
        "tokenizer_id": cache.info.tokenizer_id,
        "manifest_sha256": cache.info.manifest_sha256,
        "labelled_episodes": [int(e) for e in labelled],
    }


def train_lawm(
    cfg: Config,
    model_name: str,
    cache: TokenCache,
    labelled: np.ndarray,
    run_dir: Path,
    tokenizer: Tokenizer,
    device: torch.device,
) -> Path:
    """Train (or resume, or reuse when finished) one LAWM world model on ``cache`` (made by ``tokenizer``);
    returns its checkpoint."""
    h, w = cache.info.grid
    cfg = with_token_shape(cfg, h * w, len(cache.info.levels))  # N and F as the cache holds them
    lt, want = cfg.lam_train, identity(cfg, model_name, cache, labelled)
    cache.require("actions")
    ckpts = Checkpoints(run_dir, keep_last=lt.keep_last)
    model = build_lawm(cfg, model_name).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=lt.lr, betas=tuple(lt.betas), weight_decay=lt.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, lt.warmup_steps, lt.steps)
    )
    step, state = 0, ckpts.load_latest()
    if state is not None:
        if state["identity"] != want:
            raise ValueError(
                f"{ckpts.latest} was trained with other settings or data than asked now; delete {run_dir} "
                "or point lawm.run_dir elsewhere"
            )
        step = restore_train_state(state, model, optimizer, scheduler, 0)
        if step >= lt.steps:
            return ckpts.latest
    windows = TokenWindows(cache, lt.window, lt.window_stride)
    episodes = clip_episodes(cache)[:, 0][windows.items[:, 0]]
    window_labelled = np.isin(episodes, labelled)  # labels are per episode: a window is all or nothing
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "metrics.jsonl"
    bar = tqdm(total=lt.steps, initial=step, desc=f"lawm {model_name}", unit="step", mininterval=2.0)
    model.train()
    while step < lt.steps:
        rng = np.random.default_rng([lt.seed, step])
        idx = rng.integers(len(windows), size=lt.batch_size)
        batch = to_model_batch(collate([windows[int(i)] for i in idx]), tokenizer, device, check_codes=False)
        labelled_t = torch.from_numpy(window_labelled[idx])[:, None].expand(-1, lt.window).to(device)
        g = torch.Generator().manual_seed(lt.seed * 1_000_003 + step)
        sample, kl_weight = latent_warmup(step, lt.latent_warmup_steps)
        k = model.num_entities
        noise = torch.randn((len(idx), lt.window - 1, k, model.latent_dim), generator=g) * float(sample)
        inputs = {
            "features": batch["features"],
            # actions of unlabelled episodes never leave this function
            "actions": torch.where(labelled_t, batch["actions"], 0),
            "labelled": labelled_t,
            "noise": noise.to(device),
            "encoder_draw": torch.rand((len(idx), lt.window - 1), generator=g).to(device),
            "kl_weight": torch.tensor(kl_weight, device=device),
        }
        loss, metrics = model(inputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), lt.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        bar.update(1)
        if step % lt.log_every == 0 or step == lt.steps:
            row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
            bar.set_postfix(loss=f"{row['loss']:.4f}", align=f"{row['align']:.4f}")
            with open(log, "a") as f:
                f.write(json.dumps(row) + "\n")
        if step % lt.ckpt_every == 0 or step == lt.steps:
            extra = {"kind": "lawm", "identity": want, "config": to_dict(cfg), "rng": [rng_state()]}
            extra["metrics"] = {k: float(v) for k, v in metrics.items() if v.numel() == 1}
            ckpts.save(train_state(model, optimizer, scheduler, step, **extra))
    bar.close()
    return ckpts.latest


def load_lawm(path: str | Path, device: torch.device) -> tuple[LatentActionWorldModel, dict[str, Any]]:
    """A trained LAWM world model rebuilt from the config inside its checkpoint, in eval mode, frozen."""
    state = load_checkpoint(path, map_location="cpu")
    if state.get("kind") != "lawm":
        raise ValueError(f"{path} is not a LAWM checkpoint of train/lawm_fit.py (kind {state.get('kind')!r})")
    cfg = from_dict(Config, state["config"])
    model = build_lawm(cfg, state["identity"]["model"])
    model.load_state_dict(state["model"])
    return model.to(device).eval().requires_grad_(False), state
