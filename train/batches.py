"""Training batches from the token cache, in one place: which windows (``TokenWindows``), which of them
at each step on each rank (``GlobalBatches``), stacked (``collate``) and turned into the FSQ features the
world models read (``to_model_batch``, through ``Tokenizer.codes_to_features``).

Axes: B windows, T frames per window, h w token grid, N = h * w tokens, F = FSQ width.
"""

from __future__ import annotations

import numpy as np
import torch

from model.tokenizer import Tokenizer
from shards.tokens import TokenCache


class TokenWindows(torch.utils.data.Dataset):
    """Windows of ``window`` consecutive frames of cached codes, for training.

    Item i is window i of the enumeration (clip, start) over every clip with starts every ``stride``
    frames. Returns ``{"codes": int64 [window, h, w], "actions": int64 [window(, A)], ...}``. A plain
    map-style Dataset: use it with ``DistributedSampler`` (or any sampler) and a DataLoader.
    """

    def __init__(self, cache: TokenCache, window: int, stride: int | None = None) -> None:
        self.cache, self.window = cache, window
        stride = stride or window
        lengths = cache.clip_lengths()
        per_clip = np.maximum((lengths - window) // stride + 1, 0)
        if per_clip.sum() == 0:
            raise ValueError(f"no window of {window} frames fits in the clips of {cache.dir}")
        clips = np.repeat(np.arange(len(lengths)), per_clip)
        first = np.repeat(np.cumsum(per_clip) - per_clip, per_clip)
        starts = (np.arange(len(clips)) - first) * stride
        self.items = np.stack([clips, starts], axis=1).astype(np.int64)  # [num_windows, (clip, start)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        clip, start = (int(v) for v in self.items[i])
        data = self.cache.clip(clip, start, self.window)
        out = {"codes": torch.from_numpy(np.array(data["codes"], dtype=np.int64))}
        for name in ("actions", "positions"):
            if name in data:
                out[name] = torch.from_numpy(np.array(data[name], dtype=np.int64))
        for name in ("rewards", "dones"):  # float32 / bool, as cached
            if name in data:
                out[name] = torch.from_numpy(np.array(data[name]))
        return out


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


def to_model_batch(
    batch: dict[str, torch.Tensor], tokenizer: Tokenizer, device: torch.device, check_codes: bool = True
) -> dict[str, torch.Tensor]:
    """A collated batch on ``device`` with the exact FSQ vectors ``features`` float [B, T, N, F] in place
    of ``codes`` [B, T, h, w]; actions and positions as they were.

    ``check_codes=False`` skips the range check of the codes (``Tokenizer.codes_to_features``): the
    training loop reads a token cache made by this very tokenizer and verified when opened, and the check
    would make the host wait for the GPU at every step."""
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    codes = batch.pop("codes")
    batch["features"] = tokenizer.codes_to_features(codes, check=check_codes).flatten(2, 3)
    return batch
