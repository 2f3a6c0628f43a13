"""Tiny nuPlan logs for tests and the benchmark: the real schema (``nuplan_schema.sql``, copied from the
shared notes), calibration blobs pickled the way the devkit pickles them, and generated JPEGs.

Every frame's JPEG is a flat grey ``level`` (unique per frame) plus zero-mean patterns, so the mean of a
decoded frame tells which frame it is, whatever the crop, resize or lossy codec.
"""

from __future__ import annotations

import hashlib
import pickle
import sqlite3
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

SCHEMA_SQL = Path(__file__).with_name("nuplan_schema.sql")
DEVKIT_MODULE = "nuplan.database.common.data_types"
T0 = 1_620_856_838_000_000  # 2021-05-12 22:00:38 UTC, in microseconds
CATEGORIES = ("vehicle", "pedestrian", "bicycle")


def token(*parts: object) -> bytes:
    """Deterministic 8-byte token, like nuPlan's."""
    return hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()


@contextmanager
def devkit_types() -> Iterator[types.ModuleType]:
    """A throwaway ``nuplan.database.common.data_types`` with the devkit's three list subclasses, so that
    pickles name the devkit's classes exactly as real log DBs do. Removed again on exit."""
    names = ["nuplan", "nuplan.database", "nuplan.database.common", DEVKIT_MODULE]
    saved = {n: sys.modules.get(n) for n in names}
    for n in names:
        sys.modules[n] = types.ModuleType(n)
    module = sys.modules[DEVKIT_MODULE]
    for cls in ("Translation", "Rotation", "CameraIntrinsic"):
        setattr(module, cls, type(cls, (list,), {"__module__": DEVKIT_MODULE, "__qualname__": cls}))
    try:
        yield module
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def intrinsic_for(width: int, height: int) -> list[list[float]]:
    """A CAM_F0-like camera matrix scaled to a ``width`` x ``height`` image."""
    s = width / 1920
    return [[1545.0 * s, 0.0, 960.0 * s], [0.0, 1545.0 * s, 560.0 * height / 1080], [0.0, 0.0, 1.0]]


DISTORTION = [-0.356, 0.172, -0.00032, 0.00021, -0.0516]
TRANSLATION = [1.672, -0.012, 1.553]
ROTATION = [0.4998, -0.5015, 0.4990, -0.4997]


def calibration_blobs(width: int, height: int) -> dict[str, bytes]:
    """translation/rotation/intrinsic/distortion as the devkit stores them: protocol 5 pickles of devkit
    list subclasses (numpy float64 scalars inside translation and rotation) and a plain list."""
    with devkit_types() as dt:
        return {
            "translation": pickle.dumps(dt.Translation([np.float64(v) for v in TRANSLATION]), protocol=5),
            "rotation": pickle.dumps(dt.Rotation([np.float64(v) for v in ROTATION]), protocol=5),
            "intrinsic": pickle.dumps(dt.CameraIntrinsic(intrinsic_for(width, height)), protocol=5),
            "distortion": pickle.dumps(list(DISTORTION), protocol=5),
        }


def flat_frame(level: int, width: int, height: int) -> np.ndarray:
    """uint8 [H, W, 3]: grey ``level`` plus odd-symmetric patterns (zero mean over any centred crop)."""
    x = np.linspace(-1.0, 1.0, width)[None, :]
    y = np.linspace(-1.0, 1.0, height)[:, None]
    pattern = np.stack([12 * x * y, -12 * x * y + 0 * x, 8 * x + 0 * y], axis=-1)
    return np.clip(np.rint(level + pattern), 0, 255).astype(np.uint8)


def level_of(k: int) -> int:
    """Grey level of raw frame ``k`` of a fixture log (distinct per frame, 6 apart after stride 2)."""
    return 16 + 3 * k


@dataclass
class Frame:
    k: int  # raw frame number in the log (time order)
    token: bytes
    timestamp: int
    level: int
    rel: str  # filename_jpg
    ego: tuple[float, float, float, float]  # x, y, vx, vy


@dataclass
class Log:
    name: str
    db: Path
    frames: list[Frame] = field(default_factory=list)  # CAM_F0, time order
    missing: set[int] = field(default_factory=set)
    corrupt: set[int] = field(default_factory=set)
    lidar: list[tuple[bytes, int, bytes]] = field(default_factory=list)  # token, timestamp, scene token
    counts: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # lidar_pc -> (vehicles, pedestrians)
    tags: dict[bytes, list[str]] = field(default_factory=dict)
    location: str = "las_vegas"


def write_log(
    db_dir: Path,
    roots: Sequence[Path],
    name: str,
    n: int,
    *,
    camera: str = "CAM_F0",
    gap_after: int | None = None,
    missing: Sequence[int] = (),
    truncated: Sequence[int] = (),
    garbage: Sequence[int] = (),
    lidar_until: int | None = None,
    root_of: Callable[[int], int] = lambda k: 0,
    shadow: dict[int, int] | None = None,
    size: tuple[int, int] = (320, 180),
    content: Callable[[int, int, int], np.ndarray] | None = None,
    quality: int = 90,
    write_jpegs: bool = True,
    blobs: dict[str, bytes] | None = None,
) -> Log:
    """Write ``<db_dir>/<name>.db`` with ``n`` camera frames at ~10 Hz (inserted out of time order) and
    their JPEGs under ``roots[root_of(k)]``.

    gap_after: raw frame after which the camera pauses ~0.5 s. missing/truncated/garbage: raw frames whose
    JPEG is absent / cut short / not a JPEG. lidar_until: no lidar sweep after this raw frame's time.
    shadow: {k: root} also writes frame k under another root, with level 250 (the first root must win).
    content(k, W, H): the frame's pixels (default ``flat_frame(level_of(k))``).
    """
    db_dir.mkdir(parents=True, exist_ok=True)
    width, height = size
    log = Log(name, db_dir / f"{name}.db", missing=set(missing), corrupt=set(truncated) | set(garbage))
    log_tok, cam_tok, side_tok, lidar_dev = (
        token(name, "log"),
        token(name, camera),
        token(name, "L0"),
        token(name, "lidar"),
    )
    rng = np.random.default_rng(len(name) + n)
    for k in range(n):
        ts = (
            T0
            + 100_000 * k
            + ((k * 37) % 7 - 3) * 1000
            + (400_000 if gap_after is not None and k > gap_after else 0)
        )
        rel = f"{name}/{camera}/{token(name, 'img', k).hex()}.jpg"
        log.frames.append(
            Frame(
                k, token(name, "img", k), ts, level_of(k), rel, (100.0 + k, 200.0 + 2 * k, 3.0 + 0.1 * k, 4.0)
            )
        )

    lidar_end = (
        log.frames[lidar_until].timestamp if lidar_until is not None else log.frames[-1].timestamp + 60_000
    )
    j = 0
    while T0 - 20_000 + 50_000 * j <= lidar_end:
        ts = T0 - 20_000 + 50_000 * j
        scene = token(name, "scene", 0 if ts < (T0 + log.frames[-1].timestamp) // 2 else 1)
        lt = token(name, "lidar_pc", j)
        log.lidar.append((lt, ts, scene))
        log.counts[lt] = (j % 3 + (j // 7) % 2, (j // 4) % 3)
        tags = (["stationary"] if j % 5 == 0 else []) + (["on_intersection"] if j % 10 == 0 else [])
        if tags:
            log.tags[lt] = sorted(tags)
        j += 1

    blobs = blobs or calibration_blobs(width, height)
    with closing(sqlite3.connect(log.db)) as db:
        db.executescript(SCHEMA_SQL.read_text())
        db.execute(
            "INSERT INTO log VALUES (?, ?, ?, ?, ?, ?, ?)",
            (log_tok, "veh-35", "2021-05-12", T0, name, log.location, "nuplan-maps-v1.0"),
        )
        for tok, channel in ((cam_tok, camera), (side_tok, "CAM_L0")):
            db.execute(
                "INSERT INTO camera VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    tok,
                    log_tok,
                    channel,
                    "fixture-cam",
                    blobs["translation"],
                    blobs["rotation"],
                    blobs["intrinsic"],
                    blobs["distortion"],
                    width,
                    height,
                ),
            )
        order = rng.permutation(n)  # rowid order != time order: the reader must sort by timestamp
        for k in order:
            f = log.frames[k]
            ego_tok = token(name, "ego", k)
            x, y, vx, vy = f.ego
            db.execute(
                "INSERT INTO ego_pose (token, timestamp, x, y, z, qw, qx, qy, qz, vx, vy, vz, epsg, "
                "log_token) VALUES (?, ?, ?, ?, 0.5, 1.0, 0.0, 0.0, 0.0, ?, ?, 0.0, 32611, ?)",
                (ego_tok, f.timestamp, x, y, vx, vy, log_tok),
            )
            prev = log.frames[k - 1].token if k > 0 else None
            nxt = log.frames[k + 1].token if k + 1 < n else None
            db.execute(
                "INSERT INTO image VALUES (?, ?, ?, ?, ?, ?, ?)",
                (f.token, nxt, prev, ego_tok, cam_tok, f.rel, f.timestamp),
            )
            # a side camera frame at the same time: must not leak into the front-camera clips
            db.execute(
                "INSERT INTO image VALUES (?, NULL, NULL, ?, ?, ?, ?)",
                (token(name, "side", k), ego_tok, side_tok, f"{name}/CAM_L0/{k:016x}.jpg", f.timestamp),
            )
        db.execute(
            "INSERT INTO lidar VALUES (?, ?, 'MergedPointCloud', 'fixture', NULL, NULL)", (lidar_dev, log_tok)
        )
        for s in range(2):
            db.execute(
                "INSERT INTO scene (token, log_token, name) VALUES (?, ?, ?)",
                (token(name, "scene", s), log_tok, f"scene-{s}"),
            )
        cat_tok = {c: token("category", c) for c in CATEGORIES}
        for c, t in cat_tok.items():
            db.execute("INSERT INTO category VALUES (?, ?, ?)", (t, c, c))
        for j, (lt, ts, scene) in enumerate(log.lidar):
            ego_tok = token(name, "lidar_ego", j)
            db.execute(
                "INSERT INTO ego_pose (token, timestamp, log_token) VALUES (?, ?, ?)", (ego_tok, ts, log_tok)
            )
            db.execute(
                "INSERT INTO lidar_pc VALUES (?, NULL, NULL, ?, ?, ?, ?, ?)",
                (lt, ego_tok, lidar_dev, scene, f"{name}/MergedPointCloud/{j:016x}.pcd", ts),
            )
            vehicles, pedestrians = log.counts[lt]
            boxes = ["vehicle"] * vehicles + ["pedestrian"] * pedestrians + ["bicycle"] * (j % 2)
            for b, category in enumerate(boxes):
                track = token(name, "track", category, b)
                db.execute(
                    "INSERT OR IGNORE INTO track (token, category_token) VALUES (?, ?)",
                    (track, cat_tok[category]),
                )
                db.execute(
                    "INSERT INTO lidar_box (token, lidar_pc_token, track_token) VALUES (?, ?, ?)",
                    (token(name, "box", j, b), lt, track),
                )
            for t, tag in enumerate(log.tags.get(lt, [])):
                db.execute(
                    "INSERT INTO scenario_tag (token, lidar_pc_token, type) VALUES (?, ?, ?)",
                    (token(name, "tag", j, t), lt, tag),
                )
        db.commit()

    if write_jpegs:
        for f in log.frames:
            if f.k in log.missing:
                continue
            path = roots[root_of(f.k)] / f.rel
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = content(f.k, width, height) if content else flat_frame(f.level, width, height)
            Image.fromarray(pixels).save(path, "JPEG", quality=quality)
            if f.k in truncated:
                data = path.read_bytes()
                path.write_bytes(data[: len(data) // 3])
            elif f.k in garbage:
                path.write_bytes(b"this is not a jpeg" * 20)
            if shadow and f.k in shadow:
                other = roots[shadow[f.k]] / f.rel
                other.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(flat_frame(250, width, height)).save(other, "JPEG", quality=quality)
    return log


def write_non_nuplan_db(path: Path) -> None:
    """A valid SQLite file that is not a nuPlan log."""
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        db.execute("INSERT INTO notes (text) VALUES ('hello')")
        db.commit()


def write_corrupt_db(path: Path) -> None:
    """SQLite's magic header followed by garbage."""
    path.write_bytes(
        b"SQLite format 3\x00" + bytes(np.random.default_rng(0).integers(0, 256, 8192, np.uint8))
    )


@dataclass
class Fixture:
    data_root: Path  # NUPLAN_DATA_ROOT layout: nuplan-v1.1/splits/mini/*.db, nuplan-v1.1/sensor_blobs
    db_dir: Path
    roots: list[Path]  # sensor roots: [data_root/nuplan-v1.1/sensor_blobs, data_root/cams2]
    logs: dict[str, Log]  # readable logs by name (db files of the two bad DBs are not here)
    bad_dbs: list[Path]


# Log names sort in this order (the extractor's unit order).
GAP_LOG = "2021.05.12.22.00.38_veh-35_01008_01518"
CORRUPT_LOG = "2021.06.09.17.23.18_veh-38_00773_01140"
NO_FRONT_LOG = "2021.07.16.20.45.29_veh-35_01095_01486"
NO_JPEG_LOG = "2021.08.17.18.54.02_veh-45_00665_01065"
PLAIN_LOG = "2021.09.29.17.35.58_veh-44_00066_00432"
NOT_NUPLAN_DB = "2021.10.05.07.10.04_veh-52_01442_01802"
CORRUPT_DB = "2021.10.06.08.34.20_veh-53_01089_01868"


def build_fixture(root: Path) -> Fixture:
    """Seven .db files under ``root`` (NUPLAN_DATA_ROOT layout) with two sensor roots:

    GAP_LOG       40 frames, a 0.5 s gap after frame 19, frame 30 missing, frames >= 24 in the second root,
                  frame 0 also (with other pixels) in the second root
    CORRUPT_LOG   30 frames, frame 10 truncated, frame 14 not a JPEG, no lidar after frame 20
    NO_FRONT_LOG  camera images of CAM_L0 only
    NO_JPEG_LOG   12 frames, no JPEG unpacked
    PLAIN_LOG     20 frames, clean
    NOT_NUPLAN_DB a SQLite file of another schema; CORRUPT_DB garbage after the SQLite header
    """
    db_dir = root / "nuplan-v1.1" / "splits" / "mini"
    roots = [root / "nuplan-v1.1" / "sensor_blobs", root / "cams2"]
    for r in roots:
        r.mkdir(parents=True, exist_ok=True)
    logs = [
        write_log(
            db_dir,
            roots,
            GAP_LOG,
            40,
            gap_after=19,
            missing=[30],
            root_of=lambda k: int(k >= 24),
            shadow={0: 1},
        ),
        write_log(
            db_dir, roots, CORRUPT_LOG, 30, truncated=[10], garbage=[14], lidar_until=20, root_of=lambda k: 1
        ),
        write_log(db_dir, roots, NO_FRONT_LOG, 10, camera="CAM_L0"),
        write_log(db_dir, roots, NO_JPEG_LOG, 12, write_jpegs=False),
        write_log(db_dir, roots, PLAIN_LOG, 20),
    ]
    bad = [db_dir / f"{NOT_NUPLAN_DB}.db", db_dir / f"{CORRUPT_DB}.db"]
    write_non_nuplan_db(bad[0])
    write_corrupt_db(bad[1])
    return Fixture(root, db_dir, roots, {log.name: log for log in logs}, bad)


def expected_segments(log: Log, stride: int = 2, max_gap_us: int = 150_000) -> list[list[Frame]]:
    """Reference for the extractor's rules, written independently: runs cut at gaps, strided inside each
    run, cut again around missing or corrupt frames."""
    runs: list[list[Frame]] = []
    for f in log.frames:
        if runs and f.timestamp - runs[-1][-1].timestamp <= max_gap_us:
            runs[-1].append(f)
        else:
            runs.append([f])
    segments: list[list[Frame]] = []
    for run in runs:
        current: list[Frame] = []
        for f in run[::stride]:
            if f.k in log.missing or f.k in log.corrupt:
                if current:
                    segments.append(current)
                current = []
            else:
                current.append(f)
        if current:
            segments.append(current)
    return segments
