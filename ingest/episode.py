"""What a source (simulator or log reader) hands to the pipeline: one rendered episode."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Episode:
    """One episode of T frames with aligned ground truth.

    frames:    [T, H, W, 3] uint8 RGB.
    actions:   [T] (one actor, e.g. the Procgen player) or [T, A] (every MultiGrid agent) int64, or None.
               ``actions[t]`` is the action taken at frame t (it moves frame t to frame t+1).
    positions: [T, A, 2] int64 (x, y) grid cells at frame t, or None.
    rewards:   [T] float32, ``rewards[t]`` received for ``actions[t]``, or None.
    dones:     [T] bool, True where the episode ended after ``actions[t]`` (with rewards), or None.
    obs:       [T, h, w, 3] uint8, what the behaviour policy saw at frame t when that is not the frame
               itself (Procgen's 64x64 agent view), or None.
    fps:       playback rate recorded in the clip meta.
    info:      JSON-serialisable facts that identify the episode (env id, seeds, variant...); copied into
               every clip's meta.
    frame_info: per-frame facts, each a list of T JSON-serialisable values (timestamps, scene tokens, ego
               speed...); every clip's meta gets the slice of its own frames.
    """

    frames: np.ndarray
    actions: np.ndarray | None = None
    positions: np.ndarray | None = None
    fps: float = 15.0
    info: dict[str, Any] = field(default_factory=dict)
    frame_info: dict[str, list[Any]] = field(default_factory=dict)
    rewards: np.ndarray | None = None
    dones: np.ndarray | None = None
    obs: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3 or self.frames.dtype != np.uint8:
            raise ValueError(
                f"episode frames must be uint8 [T, H, W, 3], got {self.frames.dtype} {self.frames.shape}"
            )
        t = len(self.frames)
        arrays = {
            "actions": self.actions,
            "positions": self.positions,
            "rewards": self.rewards,
            "dones": self.dones,
            "obs": self.obs,
            **self.frame_info,
        }
        for name, arr in arrays.items():
            if arr is not None and len(arr) != t:
                raise ValueError(f"episode {name!r} has {len(arr)} steps but there are {t} frames")
        if (self.rewards is None) != (self.dones is None):
            raise ValueError("episode rewards and dones come together: give both or neither")
        if self.obs is not None and (
            self.obs.ndim != 4 or self.obs.shape[-1] != 3 or self.obs.dtype != np.uint8
        ):
            raise ValueError(f"episode obs must be uint8 [T, h, w, 3], got {self.obs.dtype} {self.obs.shape}")

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])
