"""Pseudo-labels for the unlabelled demo frames (paper sections 4.3 and 5.3): a small labelled subset
trains a labeller, which then labels every frame; the labels go beside the token cache, keyed to the
labeller's checkpoint (``shards/policy_data.py``).

Two labellers:
- a trained world model's frozen IDM (``infer_actions``: latent actions per transition, [K, A] with K
  slots for FLAM, K = 1 for Genie / AdaWorld) followed by an action decoder (``model/action_decoder.py``,
  invariant to slot order) trained on the labelled subset's latents;
- a supervised inverse dynamics model (two consecutive 64x64 views -> action, IMPALA CNN) trained on the
  labelled subset: the usual strong baseline.

Frame row f of a clip gets the label of the transition f -> f + 1 (``actions[f]`` is the action taken
at frame f); the last frame of every clip has no next frame in the cache and gets NO_LABEL. The labelled
subset is a seeded prefix of whole clips in a seeded order, so the 1k-frame subset lies inside the
10k-frame one. Accuracy is measured on the val split (frames no labeller saw).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from model.action_decoder import ActionDecoder, ActionDecoderConfig
from model.base import TokenWorldModel
from model.policy import PolicyNet, PolicyNetConfig
from model.tokenizer import Tokenizer
from shards.config import to_dict
from shards.policy_data import NO_LABEL, LabelInfo, cache_rows, frame_starts, label_info
from shards.tokens import TokenCache, file_id
from train.common import Checkpoints, load_world_model
from train.supervised import FitConfig, accuracy, fit_classifier, predict


def labelled_rows(cache: TokenCache, budget: int, seed: int) -> np.ndarray:
    """Frame rows (sorted) of the labelled subset: whole clips in a seeded order until ``budget`` frames
    (the last clip cut short). Budgets share their order, so a smaller subset is inside a larger one."""
    lengths, starts = cache.clip_lengths(), frame_starts(cache)
    if budget < 1 or budget > lengths.sum():
        raise ValueError(
            f"label budget {budget} must be between 1 and the {int(lengths.sum())} frames of {cache.dir}: "
            "ingest more demo episodes or lower policy.label_budgets"
        )
    rows: list[np.ndarray] = []
    left = budget
    for clip in np.random.default_rng([seed, 0x1AB]).permutation(len(lengths)):
        take = min(int(lengths[clip]), left)
        rows.append(starts[clip] + np.arange(take))
        left -= take
        if not left:
            break
    return np.sort(np.concatenate(rows))


def settings_tag(*settings: Any) -> str:
    """Short hash of a labeller's settings (dataclasses): labels made with other settings get another
    name, so a changed decoder or IDM config relabels instead of reusing what is on disk."""
    text = json.dumps([to_dict(s) for s in settings], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def label_name(budget: int, seed: int, tag: str = "") -> str:
    return f"budget{budget}-seed{seed}" + (f"-{tag}" if tag else "")


def next_frame_mask(cache: TokenCache) -> np.ndarray:
    """bool [F]: True where frame row f has its successor f + 1 in the same clip."""
    mask = np.ones(int(cache.clip_lengths().sum()), bool)
    ends = frame_starts(cache) + cache.clip_lengths() - 1
    mask[ends] = False
    return mask


# ----------------------------------------------------------------------------- world models


def latent_action_model(path: str | Path, device: torch.device) -> tuple[TokenWorldModel, dict[str, Any]]:
    """A trained latent action model, rebuilt from the config inside its checkpoint
    (``train/common.py:load_world_model``), frozen -> (model, its config dict)."""
    model, config, _ = load_world_model(path, device)
    if model.needs_actions or not getattr(model, "action_dim", 0):
        raise ValueError(
            f"{path} holds a {config['model']} model, which infers no latent actions: pseudo-labels need a "
            "latent action model (flam, genie, adaworld, playslot)"
        )
    return model.requires_grad_(False), config


def window_starts(length: int, window: int) -> list[int]:
    """Starts of windows of ``window`` frames covering every transition of a clip of ``length`` frames:
    every (window - 1) frames, the last one moved back to end at the clip's end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - 1, window - 1))
    return sorted({min(s, length - window) for s in starts})


@torch.no_grad()
def infer_latents(
    model: TokenWorldModel,
    tokenizer: Tokenizer,
    cache: TokenCache,
    window: int,
    device: torch.device,
    batch: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """Latent actions of every transition of the cache: (latents float32 [F, K, A], valid bool [F]).

    Windows of the world model's own training length (its temporal layers saw no longer context) slide
    over each clip; a transition covered by two windows keeps the first window's latent. ``tokenizer``:
    the one whose codes the cache holds (``Tokenizer.codes_to_features`` turns them into features)."""
    lengths, starts = cache.clip_lengths(), frame_starts(cache)
    jobs: dict[int, list[tuple[int, int, int]]] = {}  # window length -> [(clip, start, first row)]
    for clip, (n, row0) in enumerate(zip(lengths, starts, strict=True)):
        if n < 2:
            continue
        w = min(int(n), window)
        jobs.setdefault(w, []).extend((clip, s, int(row0) + s) for s in window_starts(int(n), w))
    latents: np.ndarray | None = None
    valid = np.zeros(int(lengths.sum()), bool)
    bar = tqdm(
        total=sum(len(j) for j in jobs.values()), desc=f"latent actions {cache.info.split}", leave=False
    )
    for w, items in jobs.items():
        for i in range(0, len(items), batch):
            chunk = items[i : i + batch]
            codes = np.stack([np.asarray(cache.clip(c, s, w)["codes"], np.int64) for c, s, _ in chunk])
            z = (
                model.infer_actions(
                    tokenizer.codes_to_features(torch.from_numpy(codes).to(device)).flatten(2, 3)
                )
                .float()
                .cpu()
                .numpy()
            )
            if latents is None:
                latents = np.zeros((len(valid), *z.shape[2:]), np.float32)
            for (_, _, row), z_clip in zip(chunk, z, strict=True):
                rows = row + np.arange(w - 1)
                new = ~valid[rows]
                latents[rows[new]] = z_clip[new]
                valid[rows[new]] = True
            bar.update(len(chunk))
    bar.close()
    if latents is None:
        raise ValueError(f"no clip of {cache.dir} has two frames: nothing to infer")
    return latents, valid


def label_with_world_model(
    wm_path: str | Path,
    tokenizer: Tokenizer,
    train: TokenCache,
    val: TokenCache,
    budgets: tuple[int, ...],
    seed: int,
    num_actions: int,
    decoder_cfg: ActionDecoderConfig,
    fit: FitConfig,
    device: torch.device,
    tag: str = "",
) -> list[tuple[np.ndarray, LabelInfo]]:
    """For each budget: an action decoder on the labelled subset's latents, its accuracy on val, and
    pseudo-labels int64 [F] of every train frame row. Latents are inferred once per split. ``tag`` ends
    the labels' name (``settings_tag`` of the decoder settings: other settings, other labels).
    ``tokenizer``: the one whose codes the caches hold (the world model's)."""
    model, config = latent_action_model(wm_path, device)
    window = int(config["lam_train"]["window"])
    wm_id, name = file_id(wm_path), config["model"]
    latents, valid = infer_latents(model, tokenizer, train, window, device)
    val_latents, val_valid = infer_latents(model, tokenizer, val, window, device)
    actions, val_actions = cache_rows(train, "actions"), cache_rows(val, "actions")
    val_rows = np.flatnonzero(val_valid)
    out = []
    for budget in budgets:
        rows = labelled_rows(train, budget, seed)
        rows = rows[valid[rows]]
        decoder = ActionDecoder(latents.shape[-1], num_actions, decoder_cfg)
        stats = fit_classifier(
            decoder,
            lambda r: torch.from_numpy(latents[r]),
            rows,
            actions[rows],
            fit,
            seed,
            device,
            desc=f"decoder {name} {budget}",
        )
        val_probs = predict(decoder, lambda r: torch.from_numpy(val_latents[r]), val_rows, device)
        labels = np.full(len(valid), NO_LABEL, np.int64)
        every = np.flatnonzero(valid)
        labels[every] = predict(decoder, lambda r: torch.from_numpy(latents[r]), every, device).argmax(-1)
        info = label_info(
            train,
            labeller="world_model",
            labeller_id=wm_id,
            labeller_path=str(Path(wm_path).resolve()),
            name=label_name(budget, seed, tag),
            label_budget=budget,
            seed=seed,
            accuracy=accuracy(val_probs, val_actions[val_rows]),
            accuracy_frames=len(val_rows),
            labelled_rows=int(valid.sum()),
            extra={
                "model": name,
                "latent_shape": list(latents.shape[1:]),
                "decoder": to_dict(decoder_cfg),
                "decoder_train": stats,
                "decoder_fit": to_dict(fit),
                "train_rows_with_latent": len(rows),
            },
        )
        out.append((labels, info))
    return out


# ----------------------------------------------------------------------------- supervised IDM


def label_with_idm(
    obs: np.ndarray,
    train: TokenCache,
    val_obs: np.ndarray,
    val: TokenCache,
    budget: int,
    seed: int,
    num_actions: int,
    net: PolicyNetConfig,
    fit: FitConfig,
    run_dir: Path,
    device: torch.device,
    tag: str = "",
) -> tuple[np.ndarray, LabelInfo]:
    """An inverse dynamics model (views f and f + 1 stacked on channels -> actions[f]) trained on the
    labelled subset, saved to ``run_dir``; its accuracy on val and its labels of every train frame row."""
    actions, val_actions = cache_rows(train, "actions"), cache_rows(val, "actions")
    has_next, val_next = next_frame_mask(train), np.flatnonzero(next_frame_mask(val))
    rows = labelled_rows(train, budget, seed)
    rows = rows[has_next[rows]]
    idm = PolicyNet(net, num_actions, in_frames=2)

    def pairs(views: np.ndarray):
        return lambda r: torch.from_numpy(np.concatenate([views[r], views[r + 1]], axis=-1))

    stats = fit_classifier(idm, pairs(obs), rows, actions[rows], fit, seed, device, desc=f"idm {budget}")
    ckpts = Checkpoints(run_dir, keep_last=1)
    path = ckpts.save(
        {"model": idm.state_dict(), "kind": "idm", "net_config": to_dict(net), "step": fit.steps}
    )
    val_probs = predict(idm, pairs(val_obs), val_next, device)
    labels = np.full(len(actions), NO_LABEL, np.int64)
    every = np.flatnonzero(has_next)
    labels[every] = predict(idm, pairs(obs), every, device).argmax(-1)
    info = label_info(
        train,
        labeller="idm",
        labeller_id=file_id(path),
        labeller_path=str(path.resolve()),
        name=label_name(budget, seed, tag),
        label_budget=budget,
        seed=seed,
        accuracy=accuracy(val_probs, val_actions[val_next]),
        accuracy_frames=len(val_next),
        labelled_rows=len(every),
        extra={"idm_train": stats, "idm_fit": to_dict(fit), "net": to_dict(net), "train_rows": len(rows)},
    )
    return labels, info
