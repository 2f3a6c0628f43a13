"""The clip-shard sample format: the one place that defines keys, extensions, meta schema and version.

One WebDataset sample is one clip of T consecutive frames. Members of sample ``<key>``:

    <key>.mp4 | <key>.mkv   the encoded frames (see ``shards.video``; codec named in the meta)
    <key>.actions.npy       ground-truth actions aligned with frames, when the source has them:
                            Procgen [T] int64 (player action); MultiGrid [T, A] int64 (every agent).
                            ``actions[t]`` is the action taken at frame t, i.e. it moves frame t to t+1
                            (the last one leads out of the clip).
    <key>.positions.npy     MultiGrid agent grid positions [T, A, 2] int64 as (x, y) cells, at frame t.
    <key>.rewards.npy       float32 [T], aligned with actions: ``rewards[t]`` is the reward received for
                            ``actions[t]`` (Procgen; version 2).
    <key>.dones.npy         bool [T]: ``dones[t]`` is True when the episode ended after ``actions[t]``
                            (terminal or the game's own time limit; False where ingest cut the episode).
    <key>.obs.mp4 | .obs.mkv  the policy's own observation of every frame when it is not the frame itself
                            (Procgen: the 64x64 agent view beside the 224x224 render; version 2), same codec.
    <key>.json              ClipMeta as JSON (utf-8, sorted keys).

Version 2 added rewards, dones and policy observations (``has_rewards``, ``has_obs``); version 1 shards
read unchanged (those fields default to False).

Keys are ``<dataset>-<episode:08d>-<clip:04d>`` (no dots: WebDataset splits key and extension at the
first dot). Shards are ``<out>/<dataset>/<split>/<dataset>-<split>-NNNNNN.tar`` where NNNNNN is the index
of the work block that wrote it; the manifest (``shards.manifest``) lists every shard, so read the list
from there rather than assuming contiguous numbers.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)  # what this code reads; everything it writes is FORMAT_VERSION
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)

VIDEO_EXTS = ("mp4", "mkv")
ACTIONS_KEY = "actions.npy"
POSITIONS_KEY = "positions.npy"
REWARDS_KEY = "rewards.npy"
DONES_KEY = "dones.npy"
OBS_PREFIX = "obs"  # policy observations: member "obs.<video_ext>", see obs_key
META_KEY = "json"
MEMBER_ORDER = (*VIDEO_EXTS, ACTIONS_KEY, POSITIONS_KEY, REWARDS_KEY, DONES_KEY, META_KEY)

_KEY_RE = re.compile(r"^[a-z0-9_]+-\d{8}-\d{4}$")


def sample_key(dataset: str, episode: int, clip: int) -> str:
    """Key of clip ``clip`` of episode ``episode``: ``<dataset>-<episode:08d>-<clip:04d>``."""
    key = f"{dataset}-{episode:08d}-{clip:04d}"
    if not _KEY_RE.match(key):
        raise ValueError(
            f"invalid sample key {key!r}: dataset names are [a-z0-9_]+, indices are non-negative"
        )
    return key


def obs_key(video_ext: str) -> str:
    """Member extension of the policy observations of a clip whose video is ``video_ext``."""
    return f"{OBS_PREFIX}.{video_ext}"


def check_readable(version: object, where: str) -> None:
    """Refuse a format version this code cannot read, naming ``where`` it came from and the fix."""
    if version not in READABLE_FORMAT_VERSIONS:
        raise ValueError(
            f"{where} has format_version {version}, this code reads {list(READABLE_FORMAT_VERSIONS)}: "
            "re-ingest the dataset or use a matching version of this package"
        )


def shard_name(dataset: str, split: str, index: int) -> str:
    """File name of shard ``index`` of ``split``: ``<dataset>-<split>-NNNNNN.tar``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return f"{dataset}-{split}-{index:06d}.tar"


@dataclass(frozen=True)
class ClipMeta:
    """Per-clip metadata stored as ``<key>.json``.

    ``source`` holds what identifies the clip's origin and is source specific: env id, seeds, variant
    and agent count for simulators; log name, scene tokens, timestamps, ego speed for nuPlan.
    """

    dataset: str
    source: str  # "multigrid" | "procgen" | "nuplan"
    split: str
    episode: int  # episode (or log) index within the dataset
    clip: int  # clip index within the episode
    start_frame: int  # index of the clip's first frame within the episode
    num_frames: int
    height: int
    width: int
    fps: float
    codec: str
    lossless: bool
    video_ext: str
    has_actions: bool
    has_positions: bool
    info: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    has_rewards: bool = False  # rewards.npy and dones.npy members (version 2)
    has_obs: bool = False  # an obs.<video_ext> member with the policy's observations (version 2)

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> ClipMeta:
        raw = json.loads(data)
        if isinstance(raw, dict):
            check_readable(raw.get("format_version"), "clip meta")
        return cls.checked(raw)

    @classmethod
    def checked(cls, raw: Any) -> ClipMeta:
        """Build from a parsed JSON dict, refusing (ValueError) missing or unknown fields, values of the
        wrong type and impossible numbers: a meta is data from a file, not a promise."""
        if not isinstance(raw, dict):
            raise ValueError(f"clip meta is a {type(raw).__name__}, not a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = set(raw) - names, _REQUIRED - set(raw)
        if unknown or missing:
            raise ValueError(f"clip meta has unknown fields {sorted(unknown)}, lacks {sorted(missing)}")
        for name, value in raw.items():
            kind = _META_TYPES[name]
            ok = isinstance(value, kind) and not (kind in (int, (int, float)) and isinstance(value, bool))
            if not ok:
                raise ValueError(f"clip meta field {name} is {type(value).__name__} {value!r:.40}")
        for name in ("episode", "clip", "start_frame"):
            if raw[name] < 0:
                raise ValueError(f"clip meta field {name} is {raw[name]}, must be >= 0")
        for name in ("num_frames", "height", "width"):
            if raw[name] < 1:
                raise ValueError(f"clip meta field {name} is {raw[name]}, must be >= 1")
        if raw["video_ext"] not in VIDEO_EXTS:
            raise ValueError(f"clip meta video_ext {raw['video_ext']!r} is not one of {VIDEO_EXTS}")
        return cls(**raw)


# What a meta's JSON values must be (JSON numbers: int, or int/float for fps).
_META_TYPES: dict[str, Any] = {
    **{name: str for name in ("dataset", "source", "split", "codec", "video_ext")},
    **{name: int for name in ("episode", "clip", "start_frame", "num_frames", "height", "width")},
    **{name: bool for name in ("lossless", "has_actions", "has_positions", "has_rewards", "has_obs")},
    "fps": (int, float),
    "info": dict,
    "format_version": int,
}
_REQUIRED = set(_META_TYPES) - {"info", "format_version", "has_rewards", "has_obs"}  # optional: version 1


@dataclass
class Clip:
    """One decoded clip: frames [T, H, W, 3] uint8 plus aligned arrays and meta."""

    key: str
    frames: np.ndarray
    meta: ClipMeta
    actions: np.ndarray | None = None
    positions: np.ndarray | None = None

    def __post_init__(self) -> None:
        t = self.frames.shape[0]
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3 or self.frames.dtype != np.uint8:
            raise ValueError(
                f"clip {self.key}: frames must be uint8 [T, H, W, 3], got {self.frames.dtype} "
                f"{self.frames.shape}"
            )
        for name, arr in (("actions", self.actions), ("positions", self.positions)):
            if arr is not None and arr.shape[0] != t:
                raise ValueError(f"clip {self.key}: {name} has {arr.shape[0]} steps but frames have {t}")


def npy_bytes(array: np.ndarray) -> bytes:
    """Serialise ``array`` as a .npy file (no pickle), deterministically."""
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def npy_load(data: bytes) -> np.ndarray:
    import io

    return np.load(io.BytesIO(data), allow_pickle=False)
