"""LAWM data from the token cache: which episodes are labelled, and the offline-RL transitions.

Shapes: F frame rows of a cache, L frames of one run, K entities, D state width, A latent size.

- ``labelled_episodes``: the labelled fraction picks whole episodes (a trajectory is labelled or not, as
  in the paper's "a small set of action-labelled trajectories"), a seeded permutation's prefix: the same
  seed gives the same episodes, and a smaller fraction's episodes lie inside a larger one's.
- ``episode_runs``: frame rows of each episode's consecutive clips, so the transition from the last frame
  of clip c to the first of clip c + 1 is kept (clips cut one episode without overlap or gap).
- ``transitions``: per run, the state of every frame alone, the IDM latent of every frame pair, and on
  labelled episodes the encoder's latent of the real action instead (the action is known there, and the
  encoder is what maps the policy's latent back to an action at evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from model.lawm import LatentActionWorldModel
from model.tokenizer import Tokenizer
from shards.tokens import TokenCache


def labelled_episodes(episodes: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The labelled subset of the distinct episode ids in ``episodes``: round(fraction * E) of the E
    episodes (at least one when fraction > 0), sorted. Deterministic in (ids, fraction, seed); nested in
    the fraction for one seed."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"lawm labelled fraction must be in [0, 1], got {fraction}")
    ids = np.unique(np.asarray(episodes, np.int64))
    count = 0 if fraction == 0 else max(1, round(fraction * len(ids)))
    order = np.random.default_rng([seed, 0x1A3E]).permutation(len(ids))
    return np.sort(ids[order[:count]])


def clip_episodes(cache: TokenCache) -> np.ndarray:
    """(episode, clip) of every cached clip, int64 [C, 2]."""
    rows = [cache.clip(i, 0, 0) for i in range(len(cache))]
    return np.asarray([(r["episode"], r["clip"]) for r in rows], np.int64).reshape(-1, 2)


def episode_runs(cache: TokenCache) -> list[tuple[int, np.ndarray]]:
    """(episode, frame rows) of every run of consecutive clips of one episode, in cache row order."""
    ids, lengths = clip_episodes(cache), cache.clip_lengths()
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    runs: list[tuple[int, np.ndarray]] = []
    last = (-1, -2)  # (episode, clip) of the previous clip in this order
    for i in np.lexsort((ids[:, 1], ids[:, 0])):  # by episode, then clip
        rows = starts[i] + np.arange(lengths[i])
        if runs and last == (ids[i, 0], ids[i, 1] - 1):
            runs[-1] = (runs[-1][0], np.concatenate([runs[-1][1], rows]))
        else:
            runs.append((int(ids[i, 0]), rows))
        last = (int(ids[i, 0]), int(ids[i, 1]))
    return runs


def cache_array(cache: TokenCache, name: str) -> np.ndarray:
    """A per-frame cached array over all frame rows [F, ...] (``TokenCache.require`` refuses a cache
    without it, e.g. rewards in shards older than format version 2)."""
    cache.require(name)
    return np.concatenate([np.asarray(cache.clip(i)[name]) for i in range(len(cache))])


@dataclass
class Transitions:
    """Offline-RL data: M transitions (s, a, r, s', done) plus where each came from."""

    states: np.ndarray  # float32 [M, K, D]
    next_states: np.ndarray  # float32 [M, K, D]
    latents: np.ndarray  # float32 [M, K, A]: encoder latent where labelled, IDM latent elsewhere
    actions: np.ndarray  # int64 [M]: real actions (read only where labelled)
    rewards: np.ndarray  # float32 [M]
    dones: np.ndarray  # bool [M]
    labelled: np.ndarray  # bool [M]
    episodes: np.ndarray  # int64 [M]

    def subset(self, mask: np.ndarray) -> Transitions:
        return Transitions(**{k: v[mask] for k, v in vars(self).items()})


@torch.no_grad()
def transitions(
    model: LatentActionWorldModel,
    cache: TokenCache,
    labelled: np.ndarray,
    tokenizer: Tokenizer,
    device: torch.device,
    batch: int = 256,
) -> Transitions:
    """Every transition f -> f + 1 within an episode run of the cache; ``labelled`` are episode ids.

    States are the world model's state of each frame on its own (a window of one frame: what evaluation
    can compute from the current observation), latents the IDM's posterior mean on the pair (f, f + 1).
    ``tokenizer``: the one that made the cache (its codes -> the features the world model reads)."""
    rewards_all, dones_all = cache_array(cache, "rewards"), cache_array(cache, "dones")
    actions_all = cache_array(cache, "actions")
    codes_all = np.concatenate([np.asarray(cache.clip(i)["codes"]) for i in range(len(cache))])
    model.eval().to(device)
    labelled_set = set(int(e) for e in labelled)
    out: dict[str, list[np.ndarray]] = {k: [] for k in Transitions.__dataclass_fields__}
    for episode, rows in tqdm(episode_runs(cache), desc=f"transitions {cache.info.split}", leave=False):
        if len(rows) < 2:
            continue
        codes = torch.from_numpy(codes_all[rows].astype(np.int64)).to(device)[None]
        feats = tokenizer.codes_to_features(codes).flatten(2, 3)[0]  # [L, N, F]
        states = torch.cat(
            [model.states(feats[i : i + batch, None])[:, 0] for i in range(0, len(rows), batch)]
        )
        pairs = torch.stack([feats[:-1], feats[1:]], dim=1)  # [L-1, 2, N, F]
        latents = torch.cat([model.latents(pairs[i : i + batch])[:, 0] for i in range(0, len(pairs), batch)])
        act = torch.from_numpy(actions_all[rows[:-1]]).to(device)
        is_labelled = episode in labelled_set
        if is_labelled:
            latents = model.encoder(act, states[:-1])
        n = len(rows) - 1
        out["states"].append(states[:-1].float().cpu().numpy())
        out["next_states"].append(states[1:].float().cpu().numpy())
        out["latents"].append(latents.float().cpu().numpy())
        out["actions"].append(actions_all[rows[:-1]].astype(np.int64))
        out["rewards"].append(rewards_all[rows[:-1]].astype(np.float32))
        out["dones"].append(dones_all[rows[:-1]].astype(bool))
        out["labelled"].append(np.full(n, is_labelled))
        out["episodes"].append(np.full(n, episode, np.int64))
    if not out["states"]:
        raise ValueError(f"no episode of {cache.dir} has two frames: no transition to learn from")
    return Transitions(**{k: np.concatenate(v) for k, v in out.items()})


@torch.no_grad()
def inverse_accuracy(model: LatentActionWorldModel, data: Transitions, batch: int = 1024) -> dict[str, float]:
    """How much of the real action the shared latent space carries: the encoder inverse applied to the IDM's
    latents of ``data`` (held-out, unlabelled transitions) against the actions taken, next to the share of
    the most frequent action (what a constant guess scores)."""
    device = next(model.parameters()).device
    pred = torch.cat(
        [
            model.encoder.invert(
                torch.from_numpy(data.states[i : i + batch]).to(device),
                torch.from_numpy(data.latents[i : i + batch]).to(device),
            ).cpu()
            for i in range(0, len(data.actions), batch)
        ]
    ).numpy()
    majority = np.bincount(data.actions).max() / len(data.actions)
    return {
        "accuracy": float((pred == data.actions).mean()),
        "majority": float(majority),
        "transitions": len(pred),
    }
