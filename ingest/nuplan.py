"""nuPlan source: the front camera (``CAM_F0``) of each log DB, cut into gap-free segments of 224x224 frames.

One unit = one log (``<log_name>.db``, SQLite). The DB is read directly (no devkit; see
``docs/nuplan.md``) in read-only mode; the JPEGs it references are looked up under one or more sensor roots.

    image rows of CAM_F0, ordered by timestamp (not by the next/prev chain)
      -> runs split where consecutive frames are > max_gap_ms apart
      -> every frame_stride-th frame of each run (10 Hz / 2 = 5 Hz by default)
      -> JPEG decode + resize, in order; a missing or corrupt JPEG ends the segment (recorded skip)
      -> segments of at most max_segment_frames frames (a multiple of clip_len: no frame is lost)

Segments are decoded lazily, one at a time, while the pipeline encodes the previous one: a log can hold
~10k frames (1.5 GB at 224x224x3) but a worker holds at most two segments of ``max_segment_frames``
frames (2 x 77 MB at the default 512) plus the encoded clips (tens of MB).

Per-frame metadata (``Episode.frame_info``, sliced into every clip's meta): timestamp, image token,
scene token (of the nearest lidar_pc within ``scene_window_ms``), ego pose and speed, vehicle and
pedestrian counts and scenario tags on that lidar_pc. Per-log facts (``Episode.info``): log name,
location, vehicle, camera calibration (read with a restricted unpickler) and the intrinsics of the
output frames.

Frames: ``resize="short_side_center_crop"`` (default) takes the centred square of side min(W, H) and
resizes it to ``resolution`` with an antialiased filter (1920x1080 -> the central 1080x1080 -> 224x224);
``"squash"`` resizes the whole frame to ``resolution`` x ``resolution`` (aspect ratio not kept).
``jpeg_draft=True`` lets libjpeg decode at 1/2, 1/4 or 1/8 scale via DCT scaling, the smallest scale
that still has at least ``resolution`` pixels across the crop (1920x1080 -> 480x270), then resizes
that: 2.8x faster than a full decode with the same filter (6.0 vs 16.8 ms per 1920x1080 frame), 42.7 dB
PSNR from a full decode + Lanczos on the benchmark's frames (``bench/nuplan.py`` measures both).
"""

from __future__ import annotations

import io
import math
import os
import pickle
import sqlite3
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field, replace
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ingest.episode import Episode
from shards.manifest import SkipRecord

RESIZE_POLICIES = ("short_side_center_crop", "squash")
RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
SETUP_HINT = (
    "set NUPLAN_DATA_ROOT=<folder holding nuplan-v1.1/> or NUPLAN_DB=<.db files or folders, "
    "comma-separated> and NUPLAN_SENSOR_ROOT=<sensor_blobs folder(s), comma-separated> "
    "(or pass source.db_paths=[...] source.sensor_roots=[...]); see docs/nuplan.md"
)
# Where a data root keeps its log DBs: the documented layout, and where the archives unpack by themselves.
DB_FOLDERS = ("nuplan-v1.1/splits", "nuplan-v1.1/data/cache", "data/cache")
SENSOR_FOLDER = "nuplan-v1.1/sensor_blobs"
VEHICLE, PEDESTRIAN = "vehicle", "pedestrian"  # nuPlan category names counted per frame


class NuplanSetupError(ValueError):
    """The nuPlan files are not where the configuration says; the message says what to set."""


class LogFormatError(ValueError):
    """A .db that SQLite can read but that is not a usable nuPlan log (reason in the message)."""


class CalibrationError(pickle.UnpicklingError):
    """A camera calibration blob that the restricted unpickler refused, or of the wrong shape."""


@dataclass(frozen=True)
class NuplanConfig:
    """Front-camera extraction from nuPlan log DBs; validated on construction.

    db_paths:      log .db files or folders searched recursively for *.db. Empty = from the environment
                   (NUPLAN_DB, else NUPLAN_DATA_ROOT). The resolver (``resolve_source``) replaces it by
                   the absolute paths of the logs to ingest, sorted by log name, one per log name.
    sensor_roots:  folders holding ``<log_name>/CAM_F0/<token>.jpg``; a JPEG is read from the first root
                   that has it. Empty = NUPLAN_SENSOR_ROOT, else $NUPLAN_DATA_ROOT/nuplan-v1.1/sensor_blobs.
    db_splits:     with NUPLAN_DATA_ROOT: the split folders to read (mini, trainval, test); empty = all.
    frame_stride:  keep every n-th camera frame: 2 turns the 10 Hz camera into 5 Hz clips (16 frames =
                   3.2 s), the rate driving world models commonly train on; 1 keeps 10 Hz.
    max_gap_ms:    consecutive camera frames further apart than this start a new segment (a clip never
                   spans a gap; striding happens inside gap-free runs, so it cannot hide one).
    max_segment_frames: memory cap per decoded segment (rounded down to a multiple of clip_len).
    scene_window_ms: an image belongs to the scene of the nearest lidar_pc within this distance in time
                   (the devkit's +-50 ms); the per-frame object counts and tags come from that lidar_pc.
    """

    db_paths: tuple[str, ...] = ()
    sensor_roots: tuple[str, ...] = ()
    db_splits: tuple[str, ...] = ()
    camera: str = "CAM_F0"
    camera_hz: float = 10.0
    frame_stride: int = 2
    max_gap_ms: float = 150.0
    resolution: int = 224
    resize: str = "short_side_center_crop"
    resample: str = "bicubic"
    jpeg_draft: bool = True
    max_segment_frames: int = 512
    scene_window_ms: float = 50.0

    def __post_init__(self) -> None:
        for name in ("frame_stride", "resolution", "max_segment_frames"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"source.{name} must be an int >= 1, got {value!r}")
        if self.resolution % 2:
            raise ValueError(f"source.resolution must be even (H.264 yuv420p), got {self.resolution}")
        for name in ("camera_hz", "max_gap_ms", "scene_window_ms"):
            if not getattr(self, name) > 0:
                raise ValueError(f"source.{name} must be > 0, got {getattr(self, name)!r}")
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"source.resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")
        if self.resample not in RESAMPLE:
            raise ValueError(f"source.resample must be one of {sorted(RESAMPLE)}, got {self.resample!r}")

    @property
    def fps(self) -> float:
        """Playback rate of the clips: the camera rate divided by the stride (5.0 by default)."""
        return self.camera_hz / self.frame_stride


# ---------------------------------------------------------------------------------------------------------
# Finding the logs (driver side, once per run)


def _split_env(value: str | None) -> list[str]:
    return [p.strip() for p in (value or "").split(",") if p.strip()]


def _db_files(entry: str, origin: str) -> list[Path]:
    path = Path(entry).expanduser()
    if path.is_file():
        return [path.resolve()]
    if path.is_dir():
        return sorted(p.resolve() for p in path.rglob("*.db") if p.is_file())
    raise NuplanSetupError(f"{origin} entry {entry} does not exist; {SETUP_HINT}")


def resolve_source(src: NuplanConfig, environ: Mapping[str, str] | None = None) -> NuplanConfig:
    """Fill in ``db_paths`` (absolute .db files, sorted by log name, one file per log name) and
    ``sensor_roots`` (absolute folders) from the config, else NUPLAN_DB / NUPLAN_SENSOR_ROOT, else
    NUPLAN_DATA_ROOT. Raises ``NuplanSetupError`` naming what is missing."""
    environ = os.environ if environ is None else environ
    data_root = environ.get("NUPLAN_DATA_ROOT", "").strip()
    root = Path(data_root).expanduser() if data_root else None
    if root is not None and not root.is_dir():
        raise NuplanSetupError(f"NUPLAN_DATA_ROOT={data_root} is not a folder; {SETUP_HINT}")

    if src.db_paths:
        entries, origin = list(src.db_paths), "source.db_paths"
    elif _split_env(environ.get("NUPLAN_DB")):
        entries, origin = _split_env(environ.get("NUPLAN_DB")), "NUPLAN_DB"
    elif root is not None:
        entries, origin = [], "NUPLAN_DATA_ROOT"
        for folder in DB_FOLDERS:
            base = root / folder
            if base.is_dir():
                entries += [
                    str(d)
                    for d in sorted(base.iterdir())
                    if d.is_dir() and (not src.db_splits or d.name in src.db_splits)
                ]
        if not entries:
            looked = ", ".join(f"{root / f}/{'|'.join(src.db_splits) or '*'}/" for f in DB_FOLDERS)
            raise NuplanSetupError(
                f"no nuPlan log DB folders under NUPLAN_DATA_ROOT={data_root} (looked in "
                f"{looked}); {SETUP_HINT}"
            )
    else:
        raise NuplanSetupError(f"no nuPlan log DBs given: {SETUP_HINT}")
    by_name: dict[str, Path] = {}
    for entry in entries:
        for path in _db_files(entry, origin):
            by_name.setdefault(path.stem, path)  # a log in two split folders (mini is in trainval) once
    if not by_name:
        raise NuplanSetupError(f"no .db files found in {origin} ({', '.join(entries)}); {SETUP_HINT}")

    if src.sensor_roots:
        roots, origin = list(src.sensor_roots), "source.sensor_roots"
    elif _split_env(environ.get("NUPLAN_SENSOR_ROOT")):
        roots, origin = _split_env(environ.get("NUPLAN_SENSOR_ROOT")), "NUPLAN_SENSOR_ROOT"
    elif root is not None:
        roots, origin = [str(root / SENSOR_FOLDER)], "NUPLAN_DATA_ROOT"
    else:
        raise NuplanSetupError(f"no camera sensor root given: {SETUP_HINT}")
    resolved_roots = []
    for r in roots:
        path = Path(r).expanduser()
        if not path.is_dir():
            raise NuplanSetupError(f"sensor root {path} (from {origin}) is not a folder; {SETUP_HINT}")
        resolved_roots.append(str(path.resolve()))
    return replace(
        src,
        db_paths=tuple(str(by_name[n]) for n in sorted(by_name)),
        sensor_roots=tuple(dict.fromkeys(resolved_roots)),
    )


def connect(path: str) -> sqlite3.Connection:
    """Read-only connection: the log DBs are inputs, never written (and may sit on read-only storage)."""
    return sqlite3.connect(f"file:{urllib.parse.quote(str(path))}?mode=ro", uri=True)


def count_camera_frames(path: str, camera: str = "CAM_F0") -> int:
    """Number of ``camera`` images in the log at ``path``; 0 for a DB that cannot be read as a log
    (the extractor records why when it gets to it)."""
    try:
        with closing(connect(path)) as db:
            (n,) = db.execute(
                "SELECT COUNT(*) FROM image WHERE camera_token IN "
                "(SELECT token FROM camera WHERE channel = ?)",
                (camera,),
            ).fetchone()
        return int(n)
    except sqlite3.DatabaseError:
        return 0


def count_frames_per_log(src: NuplanConfig, threads: int = 16) -> list[int]:
    """``count_camera_frames`` for every log, in order; threads hide file-open latency on network storage."""
    with ThreadPoolExecutor(max(1, min(threads, len(src.db_paths)))) as pool:
        return list(pool.map(lambda p: count_camera_frames(p, src.camera), src.db_paths))


# ---------------------------------------------------------------------------------------------------------
# Camera calibration blobs


def _numpy_scalar_fn() -> Any:
    try:  # numpy 2
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar
    return scalar


_NUMPY_SCALAR = _numpy_scalar_fn()
_DEVKIT_LISTS = ("Translation", "Rotation", "CameraIntrinsic")


def _is_plain_numeric(dtype: Any) -> bool:
    return isinstance(dtype, np.dtype) and dtype.kind in "biuf" and not dtype.hasobject


def _numeric_dtype(obj: Any, *args: Any) -> np.dtype:
    """``numpy.dtype`` as the pickle of a numpy scalar calls it: only plain numeric type codes."""
    if not isinstance(obj, str) or not all(isinstance(a, bool) for a in args):
        raise CalibrationError(f"refused numpy.dtype({obj!r}, ...) in a calibration blob")
    dtype = np.dtype(obj, *args)
    if not _is_plain_numeric(dtype):
        raise CalibrationError(f"refused non-numeric dtype {dtype} in a calibration blob")
    return dtype


def _numeric_scalar(dtype: Any, data: Any = None) -> Any:
    """numpy's scalar reconstructor, for numeric dtypes and raw bytes of the right size only."""
    if not _is_plain_numeric(dtype) or not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise CalibrationError(f"refused numpy scalar of dtype {dtype!r} in a calibration blob")
    return _NUMPY_SCALAR(dtype, data)


class _CalibrationUnpickler(pickle.Unpickler):
    """Loads the devkit's calibration lists without the devkit and without running foreign code: the
    three devkit list types become ``list``, numpy float scalars are rebuilt, every other global is
    refused (so a blob whose reduce names ``os.system`` fails before anything is called)."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "nuplan.database.common.data_types" and name in _DEVKIT_LISTS:
            return list
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "scalar":
            return _numeric_scalar
        if module == "numpy" and name == "dtype":
            return _numeric_dtype
        raise CalibrationError(f"refused to load {module}.{name} from a calibration blob")

    def persistent_load(self, pid: Any) -> Any:
        raise CalibrationError("refused a persistent id in a calibration blob")


# What a malformed pickle can raise while loading (besides our refusals).
_PICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    OverflowError,
    MemoryError,
    RecursionError,
)
CALIBRATION_SHAPES = {"translation": (3,), "rotation": (4,), "intrinsic": (3, 3), "distortion": (5,)}


def load_calibration(blob: bytes | None, kind: str) -> list[Any]:
    """Unpickle one camera calibration column (``kind`` in ``CALIBRATION_SHAPES``) into plain floats.

    translation [3] (m), rotation [4] quaternion (w, x, y, z), intrinsic [3][3], distortion [5]
    (k1, k2, p1, p2, k3). Raises ``CalibrationError`` for a refused global, a broken pickle or a wrong
    shape.
    """
    if not isinstance(blob, bytes):
        raise CalibrationError(f"camera.{kind} is {type(blob).__name__}, not a pickled blob")
    try:
        value = _CalibrationUnpickler(io.BytesIO(blob)).load()
    except CalibrationError:
        raise
    except _PICKLE_ERRORS as e:
        raise CalibrationError(
            f"camera.{kind} is not a readable calibration pickle: {type(e).__name__}: {e}"
        ) from e
    return _check_shape(value, CALIBRATION_SHAPES[kind], f"camera.{kind}")


def _check_shape(value: Any, shape: tuple[int, ...], what: str) -> list[Any]:
    if not isinstance(value, list) or len(value) != shape[0]:
        raise CalibrationError(
            f"{what} should be a list of {shape[0]}, got {type(value).__name__} "
            f"of {len(value) if isinstance(value, list) else '?'}"
        )
    if len(shape) > 1:
        return [_check_shape(v, shape[1:], f"{what}[{i}]") for i, v in enumerate(value)]
    out = []
    for v in value:
        if not isinstance(v, (Real, np.number)) or isinstance(v, bool) or not math.isfinite(float(v)):
            raise CalibrationError(f"{what} holds {v!r}, not a finite number")
        out.append(float(v))
    return out


# ---------------------------------------------------------------------------------------------------------
# Reading one log's tables


@dataclass
class LogIndex:
    """Everything the DB says about a log's camera frames, before any JPEG is read. N = camera images,
    ordered by (timestamp, token)."""

    name: str
    info: dict[str, Any]  # per-log facts copied into every clip's meta
    tokens: list[bytes]  # [N] image tokens
    timestamps: np.ndarray  # [N] int64 microseconds
    filenames: list[str]  # [N] relative to a sensor root
    ego: np.ndarray  # [N, 9] float64 x, y, z, qw, qx, qy, qz, vx, vy (NaN where the pose is missing)
    lidar: np.ndarray  # [N] int64 index into lidar_tokens of the nearest lidar_pc, -1 when none in window
    lidar_tokens: list[bytes] = field(default_factory=list)
    lidar_scenes: list[bytes | None] = field(default_factory=list)
    counts: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # lidar_pc -> (vehicles, peds)
    tags: dict[bytes, list[str]] = field(default_factory=dict)  # lidar_pc -> sorted scenario tags


def read_log_index(path: str, src: NuplanConfig) -> LogIndex:
    """Read the camera frames of log ``path`` and their metadata with a handful of queries.

    Raises sqlite3.DatabaseError (not a DB, corrupt, missing tables), LogFormatError (no log row, values
    of the wrong type) or CalibrationError. A log without ``src.camera`` images gives an index with N = 0.
    """
    name = Path(path).stem
    with closing(connect(path)) as db:
        log_rows = db.execute("SELECT logfile, location, vehicle_name, map_version FROM log").fetchall()
        if not log_rows:
            raise LogFormatError("its log table is empty")
        logfile, location, vehicle, map_version = log_rows[0]
        info: dict[str, Any] = {
            "log": name,
            "logfile": _plain(logfile),
            "location": _plain(location),
            "vehicle": _plain(vehicle),
            "map_version": _plain(map_version),
        }
        cams = db.execute(
            "SELECT model, translation, rotation, intrinsic, distortion, width, height "
            "FROM camera WHERE channel = ? ORDER BY token",
            (src.camera,),
        ).fetchall()
        rows = db.execute(
            "SELECT i.token, i.timestamp, i.filename_jpg, e.x, e.y, e.z, e.qw, e.qx, e.qy, e.qz, e.vx, e.vy "
            "FROM image AS i JOIN camera AS c ON c.token = i.camera_token "
            "LEFT JOIN ego_pose AS e ON e.token = i.ego_pose_token "
            "WHERE c.channel = ? ORDER BY i.timestamp, i.token",
            (src.camera,),
        ).fetchall()
        if not cams or not rows:
            return LogIndex(
                name, info, [], np.zeros(0, np.int64), [], np.zeros((0, 9)), np.zeros(0, np.int64)
            )
        model, *blobs, width, height = cams[0]
        calib = {
            kind: load_calibration(blob, kind) for kind, blob in zip(CALIBRATION_SHAPES, blobs, strict=True)
        }
        info["camera"] = {
            "channel": src.camera,
            "model": _plain(model),
            "width": _plain(width),
            "height": _plain(height),
            **calib,
        }
        if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
            info["intrinsic_out"] = output_intrinsic(calib["intrinsic"], (width, height), src)
        lidar_rows = db.execute(
            "SELECT token, timestamp, scene_token FROM lidar_pc ORDER BY timestamp, token"
        ).fetchall()
        counts: dict[bytes, list[int]] = {}
        for lidar_pc, category, n in db.execute(
            "SELECT b.lidar_pc_token, c.name, COUNT(*) FROM lidar_box AS b "
            "JOIN track AS t ON t.token = b.track_token JOIN category AS c ON c.token = t.category_token "
            "WHERE c.name IN (?, ?) GROUP BY b.lidar_pc_token, c.name",
            (VEHICLE, PEDESTRIAN),
        ):
            counts.setdefault(lidar_pc, [0, 0])[category == PEDESTRIAN] = int(n)
        tags: dict[bytes, set[str]] = {}
        for lidar_pc, tag in db.execute("SELECT lidar_pc_token, type FROM scenario_tag"):
            if tag is not None:
                tags.setdefault(lidar_pc, set()).add(str(tag))

    try:  # SQLite does not enforce column types: a damaged DB can hold NULLs or text anywhere
        timestamps = np.array([r[1] for r in rows], dtype=np.int64)
        ego = np.array([[np.nan if v is None else v for v in r[3:]] for r in rows], dtype=np.float64)
        lidar_ts = np.array([r[1] for r in lidar_rows], dtype=np.int64)
        return LogIndex(
            name=name,
            info=info,
            tokens=[bytes(r[0]) for r in rows],
            timestamps=timestamps,
            filenames=[str(r[2]) for r in rows],
            ego=ego,
            lidar=nearest(lidar_ts, timestamps, int(src.scene_window_ms * 1000)),
            lidar_tokens=[bytes(r[0]) for r in lidar_rows],
            lidar_scenes=[None if r[2] is None else bytes(r[2]) for r in lidar_rows],
            counts={k: (v[0], v[1]) for k, v in counts.items()},
            tags={k: sorted(v) for k, v in tags.items()},
        )
    except (TypeError, ValueError, OverflowError) as e:
        raise LogFormatError(f"unexpected values in its image, ego_pose or lidar_pc rows ({e})") from e


def _plain(value: Any) -> str | int | float | None:
    """A DB value as something JSON can hold (SQLite may return bytes for a text column)."""
    return value if value is None or isinstance(value, (str, int, float)) else str(value)


def nearest(sorted_ts: np.ndarray, query_ts: np.ndarray, window: int) -> np.ndarray:
    """Index into ``sorted_ts`` [M] of the nearest value to each of ``query_ts`` [N] (ties: the earlier);
    -1 where the nearest is more than ``window`` away or M = 0."""
    if len(sorted_ts) == 0:
        return np.full(len(query_ts), -1, dtype=np.int64)
    right = np.clip(np.searchsorted(sorted_ts, query_ts), 0, len(sorted_ts) - 1)
    left = np.clip(right - 1, 0, len(sorted_ts) - 1)
    pick = np.where(np.abs(query_ts - sorted_ts[left]) <= np.abs(sorted_ts[right] - query_ts), left, right)
    return np.where(np.abs(sorted_ts[pick] - query_ts) <= window, pick, -1).astype(np.int64)


def plan_runs(timestamps: np.ndarray, stride: int, max_gap_us: float) -> list[np.ndarray]:
    """Cut timestamps [N] (sorted) where consecutive frames are > ``max_gap_us`` apart, then keep every
    ``stride``-th frame of each run. Returns the frame indices of each run (no run crosses a gap)."""
    if len(timestamps) == 0:
        return []
    cuts = np.flatnonzero(np.diff(timestamps) > max_gap_us) + 1
    return [run[::stride] for run in np.split(np.arange(len(timestamps)), cuts)]


# ---------------------------------------------------------------------------------------------------------
# JPEGs


class SensorIndex:
    """Finds ``<log>/CAM_F0/<token>.jpg`` under several sensor roots: one directory listing per
    (root, folder) instead of a stat per frame and root (which is slow on network storage)."""

    def __init__(self, roots: Sequence[str]) -> None:
        self.roots = list(roots)
        self._listings: dict[tuple[str, str], frozenset[str]] = {}

    def _listing(self, root: str, folder: str) -> frozenset[str]:
        key = (root, folder)
        if key not in self._listings:
            try:
                self._listings[key] = frozenset(os.listdir(os.path.join(root, folder)))
            except (FileNotFoundError, NotADirectoryError):
                self._listings[key] = frozenset()
        return self._listings[key]

    def find(self, rel: str) -> str | None:
        """Absolute path of ``rel`` under the first root that has it; None when none has it, or when
        ``rel`` tries to leave the roots (absolute or ``..``: the DB is not trusted)."""
        norm = os.path.normpath(rel)
        if os.path.isabs(norm) or norm.startswith(".."):
            return None
        folder, name = os.path.split(norm)
        for root in self.roots:
            if name in self._listing(root, folder):
                return os.path.join(root, norm)
        return None


def crop_box(size: tuple[int, int], policy: str) -> tuple[float, float, float, float]:
    """Region (left, upper, right, lower) of a ``size`` = (W, H) image that becomes the output frame."""
    w, h = size
    if policy == "squash":
        return 0.0, 0.0, float(w), float(h)
    side = min(w, h)
    return (w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2


def output_intrinsic(k: list[list[float]], size: tuple[int, int], src: NuplanConfig) -> list[list[float]]:
    """Camera matrix [3][3] of the output frames given the source's ``k`` and (W, H)."""
    x0, y0, x1, y1 = crop_box(size, src.resize)
    sx, sy = src.resolution / (x1 - x0), src.resolution / (y1 - y0)
    return [
        [k[0][0] * sx, k[0][1] * sx, (k[0][2] - x0) * sx],
        [k[1][0] * sy, k[1][1] * sy, (k[1][2] - y0) * sy],
        [0.0, 0.0, 1.0],
    ]


def decode_frame(path: str, src: NuplanConfig) -> np.ndarray:
    """Read the JPEG at ``path`` as uint8 [R, R, 3] RGB (R = ``src.resolution``).

    Raises OSError (unreadable, truncated or corrupt; PIL.UnidentifiedImageError is one), SyntaxError or
    ValueError (damaged files in some PIL plugins) or PIL.Image.DecompressionBombError.
    """
    r = src.resolution
    with Image.open(path) as img:
        if src.jpeg_draft:
            x0, y0, x1, y1 = crop_box(img.size, src.resize)
            # smallest DCT scale that keeps >= r pixels across the crop (draft picks the scale itself)
            want = (math.ceil(r * img.size[0] / (x1 - x0)), math.ceil(r * img.size[1] / (y1 - y0)))
            img.draft("RGB", want)
        img.load()  # decodes (raises here for a truncated or corrupt file)
        rgb = img if img.mode == "RGB" else img.convert("RGB")
        out = rgb.resize((r, r), RESAMPLE[src.resample], box=crop_box(rgb.size, src.resize))
    return np.asarray(out, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------------
# One log -> segments


class NuplanLog:
    """One log as the pipeline sees it: ``segments()`` yields decoded Episodes lazily; ``skips`` holds
    the unit-level skip (unreadable DB, no camera images...) at once and the per-frame skips (missing or
    corrupt JPEGs) as ``segments()`` meets them."""

    def __init__(self, src: NuplanConfig, index: int, clip_len: int) -> None:
        self.src = src
        self.path = src.db_paths[index]
        self.name = Path(self.path).stem
        self.unit_name = f"log {self.name}"
        self.skips: list[SkipRecord] = []
        self.cap = max(clip_len, src.max_segment_frames // clip_len * clip_len)
        self.index: LogIndex | None = None
        try:
            self.index = read_log_index(self.path, src)
        except sqlite3.DatabaseError as e:
            self._skip_log(f"not a readable nuPlan log DB ({type(e).__name__}: {e})")
        except LogFormatError as e:
            self._skip_log(f"not a nuPlan log DB: {e}")
        except CalibrationError as e:
            self._skip_log(f"camera calibration refused: {e}")
        if self.index is not None and not self.index.tokens:
            self._skip_log(f"no {src.camera} images in log")
            self.index = None

    def _skip_log(self, reason: str, frames: int = 0) -> None:
        self.skips.append(SkipRecord(self.unit_name, reason, frames))

    def segments(self) -> Iterator[Episode]:
        """Decoded segments in time order: each [T <= cap, R, R, 3], gap-free, from one run."""
        idx, src = self.index, self.src
        if idx is None:
            return
        runs = plan_runs(idx.timestamps, src.frame_stride, src.max_gap_ms * 1000)
        sensors = SensorIndex(src.sensor_roots)
        paths = {int(i): sensors.find(idx.filenames[i]) for run in runs for i in run}
        if not any(paths.values()):
            self._skip_log(
                f"none of its {len(paths)} {src.camera} JPEGs is under the sensor roots "
                f"{list(src.sensor_roots)} (is the log's camera archive unpacked there?)",
                len(paths),
            )
            return
        seg_no = 0
        for run in runs:
            frames = np.empty((self.cap, src.resolution, src.resolution, 3), np.uint8)
            kept: list[int] = []
            for i in map(int, run):
                frame = self._frame(i, paths[i])
                if frame is not None:
                    frames[len(kept)] = frame
                    kept.append(i)
                if kept and (frame is None or len(kept) == self.cap):  # a bad frame or a full buffer
                    yield self._episode(frames[: len(kept)], kept, seg_no)
                    seg_no += 1
                    frames = np.empty_like(frames)
                    kept = []
            if kept:
                yield self._episode(frames[: len(kept)], kept, seg_no)
                seg_no += 1

    def _frame(self, i: int, path: str | None) -> np.ndarray | None:
        """Frame i decoded, or None after recording why it cannot be."""
        idx = self.index
        what = f"frame {idx.tokens[i].hex()} of log {self.name}"
        if path is None:
            roots = list(self.src.sensor_roots)
            self.skips.append(SkipRecord(what, f"missing JPEG {idx.filenames[i]} in {roots}", 1))
            return None
        try:
            return decode_frame(path, self.src)
        # PIL reports damaged files as OSError (UnidentifiedImageError included), some plugins as
        # SyntaxError or ValueError; a huge header as DecompressionBombError.
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            self.skips.append(SkipRecord(what, f"corrupt JPEG {path}: {type(e).__name__}: {e}", 1))
            return None

    def _episode(self, frames: np.ndarray, kept: list[int], seg_no: int) -> Episode:
        idx = self.index
        lidar = [int(idx.lidar[i]) for i in kept]
        lidar_tok = [idx.lidar_tokens[j] if j >= 0 else None for j in lidar]
        scenes = [idx.lidar_scenes[j] if j >= 0 else None for j in lidar]
        counts = [idx.counts.get(t, (0, 0)) if t is not None else (None, None) for t in lidar_tok]
        ego = idx.ego[kept]
        frame_info = {
            "timestamp_us": [int(idx.timestamps[i]) for i in kept],
            "image_token": [idx.tokens[i].hex() for i in kept],
            "scene_token": [s.hex() if s is not None else None for s in scenes],
            "ego_speed": [_num(math.hypot(e[7], e[8]), 3) for e in ego],
            "ego_pose": [
                None
                if not np.isfinite(e[:7]).all()
                else [round(float(v), 3) for v in e[:3]] + [round(float(v), 6) for v in e[3:7]]
                for e in ego
            ],
            "num_vehicles": [c[0] for c in counts],
            "num_pedestrians": [c[1] for c in counts],
            "tags": [idx.tags.get(t, []) if t is not None else [] for t in lidar_tok],
        }
        info = {
            **idx.info,
            "segment": seg_no,
            "frame_stride": self.src.frame_stride,
            "resize": self.src.resize,
        }
        return Episode(frames=frames, fps=self.src.fps, info=info, frame_info=frame_info)


def _num(value: float, digits: int) -> float | None:
    return round(float(value), digits) if math.isfinite(value) else None  # JSON has no NaN


def open_log(src: NuplanConfig, index: int, clip_len: int) -> NuplanLog:
    """Read log ``index`` of ``src.db_paths`` (the DB now, the JPEGs as ``segments()`` is consumed)."""
    return NuplanLog(src, index, clip_len)
