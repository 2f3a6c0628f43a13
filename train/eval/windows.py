"""Evaluation windows: real frames read from a split's clip shards, with their ground truth.

Axes: W windows, L frames per window, H W pixels, M agents.
"""

from __future__ import annotations

from pathlib import Path

import torch

from shards.integrity import check_shards, require_complete, shortfall
from shards.loader import ClipDataset, list_shards
from train.config import Config


def read_windows(cfg: Config, length: int) -> dict:
    """Windows of ``length`` frames from the ``eval.split`` shards, in shard order (deterministic):
    frames uint8 [W, L, H, W, 3] and, where recorded, actions [W, L(, M)], positions [W, L, M, 2].
    Shards are checked against the manifest first (size, sha256 unless data.verify_shards=false) and
    counted as read; missing, damaged or short ones are refused unless eval.allow_partial=true, and
    returned under "missing" either way (scores.json records them)."""
    ec = cfg.eval
    shards = list_shards(cfg.dataset_dir, ec.split)
    readable, problems = check_shards(shards, verify=cfg.data.verify_shards)
    expected = {Path(s.path).stem: s.num_samples for s in shards}
    got = dict.fromkeys(expected, 0)
    out: dict[str, list] = {"frames": [], "actions": [], "positions": []}
    action_names: list[str] = []
    tile = None
    last = None
    for sample in ClipDataset(readable, rank=0, world_size=1) if readable else []:
        last = Path(sample["shard"]).stem
        got[last] += 1
        action_names = sample["meta"]["info"].get("action_names", action_names)
        tile = sample["meta"]["info"].get("tile_size", tile)  # MultiGrid: pixels per grid cell
        for start in range(0, sample["frames"].shape[0] - length + 1, length):
            for name in out:
                if name in sample:
                    out[name].append(sample[name][start : start + length])
            if ec.num_clips and len(out["frames"]) >= ec.num_clips:
                break
        if ec.num_clips and len(out["frames"]) >= ec.num_clips:
            # reading stopped inside shard `last`: it and the shards after it were not read to the end
            names = [Path(s.path).stem for s in readable]
            got.update({k: expected[k] for k in names[names.index(last) :]})
            break
    missing = shortfall(expected, got, problems)
    where = f"{ec.split} split of {cfg.dataset_dir}"
    require_complete(missing, where, "eval.allow_partial", ec.allow_partial)
    if not out["frames"]:
        raise ValueError(
            f"no window of {length} frames (eval.context_frames + eval.rollout_steps) in the {ec.split} "
            f"clips of {cfg.dataset_dir}: lower eval.rollout_steps or ingest longer clips"
        )
    windows = {k: torch.stack(v) for k, v in out.items() if v and len(v) == len(out["frames"])}
    if tile:  # (W, H) grid cells of the frames, for slot-agent assignments
        windows["cells"] = (windows["frames"].shape[3] // tile, windows["frames"].shape[2] // tile)
    return {**windows, "action_names": list(action_names), "missing": missing}
