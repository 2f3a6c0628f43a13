"""nuPlan front-camera extraction on tiny generated logs (real schema, devkit-format calibration pickles,
generated JPEGs): clip order and boundaries, metadata, recorded skips, config resolution, resume, safety."""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import pickle
import re
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from collections import defaultdict
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ingest.__main__ import main as ingest_main
from ingest.config import RunOptions, build_config
from ingest.nuplan import (
    CalibrationError,
    NuplanConfig,
    decode_frame,
    load_calibration,
    nearest,
    open_log,
    plan_runs,
)
from ingest.pipeline import IngestError, run_ingest
from ingest.splits import assign_splits
from shards.format import ClipMeta
from shards.video import decode_video, encode_frames
from tests.helpers import REPO
from tests.nuplan_fixture import (
    CORRUPT_DB,
    CORRUPT_LOG,
    DISTORTION,
    GAP_LOG,
    NO_FRONT_LOG,
    NO_JPEG_LOG,
    NOT_NUPLAN_DB,
    PLAIN_LOG,
    Fixture,
    Log,
    build_fixture,
    calibration_blobs,
    devkit_types,
    expected_segments,
    flat_frame,
    intrinsic_for,
    write_log,
)

CLIP_LEN = 4
ENV_VARS = ("NUPLAN_DATA_ROOT", "NUPLAN_DB", "NUPLAN_SENSOR_ROOT")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """The user's own NUPLAN_* variables must not leak into the tests."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Fixture:
    return build_fixture(tmp_path_factory.mktemp("nuplan"))


def sources(fx: Fixture, **extra) -> dict:
    return {"db_paths": [str(fx.db_dir)], "sensor_roots": [str(r) for r in fx.roots], **extra}


def ingest(out: Path, overrides: dict, **opts) -> dict:
    cfg = build_config("nuplan", overrides)
    return run_ingest(cfg, RunOptions(out=str(out), executor="local", progress=False, **opts))


@pytest.fixture(scope="module")
def ingested(fx, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    cfg = build_config("nuplan", {"clip_len": CLIP_LEN, "source": sources(fx)})
    manifest = run_ingest(cfg, RunOptions(out=str(out), executor="local", progress=False))
    return cfg, manifest, out / "nuplan"


def read_clips(dataset_dir: Path, manifest: dict) -> list[tuple[ClipMeta, bytes, str]]:
    """(meta, video bytes, shard split) of every clip, ordered by (log, clip)."""
    clips = []
    for shard in manifest["shards"]:
        with tarfile.open(dataset_dir / shard["path"]) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            if name.endswith(".json"):
                clips.append(
                    (ClipMeta.from_json(data), members[name[: -len("json")] + "mp4"], shard["split"])
                )
    return sorted(clips, key=lambda c: (c[0].episode, c[0].clip))


def nearest_lidar(log: Log, ts: int) -> tuple[bytes, int, bytes] | None:
    best = min(log.lidar, key=lambda lp: (abs(lp[1] - ts), lp[1]))
    return best if abs(best[1] - ts) <= 50_000 else None


def test_clips_follow_timestamps_and_are_cut_at_gaps_and_bad_frames(ingested, fx):
    _cfg, manifest, ds = ingested
    clips = read_clips(ds, manifest)
    by_log = defaultdict(list)
    for meta, video, _ in clips:
        by_log[meta.info["log"]].append((meta, video))
    assert set(by_log) == {GAP_LOG, CORRUPT_LOG, PLAIN_LOG}
    for name, log_clips in by_log.items():
        log = fx.logs[name]
        want = [
            [f.token.hex() for f in seg[i : i + CLIP_LEN]]
            for seg in expected_segments(log)
            for i in range(0, len(seg) - CLIP_LEN + 1, CLIP_LEN)
        ]
        assert [m.info["image_token"] for m, _ in log_clips] == want, name
    # GAP_LOG: 10 frames before the gap (2 clips), then 20..28 | missing 30 | 32..38 (1 + 1 clips).
    # CORRUPT_LOG: 0..8 | bad 10 | 12 | bad 14 | 16..28 (1 + 0 + 1). PLAIN_LOG: 10 frames (2).
    assert {n: len(c) for n, c in by_log.items()} == {GAP_LOG: 4, CORRUPT_LOG: 2, PLAIN_LOG: 2}
    assert manifest["totals"]["clips"] == 8 and manifest["totals"]["frames"] == 32
    gap_start = fx.logs[GAP_LOG].frames[20].timestamp
    for meta, _ in by_log[GAP_LOG]:
        ts = meta.info["timestamp_us"]
        assert all(0 < b - a <= 2 * 150_000 for a, b in itertools.pairwise(ts))
        assert ts[-1] < gap_start or ts[0] >= gap_start  # never across the gap


def test_decoded_frames_are_224_square_and_show_the_right_jpegs(ingested, fx):
    _, manifest, ds = ingested
    levels = {f.token.hex(): f.level for log in fx.logs.values() for f in log.frames}
    for meta, video, _ in read_clips(ds, manifest):
        frames = decode_video(video)
        assert frames.shape == (CLIP_LEN, 224, 224, 3) and frames.dtype == np.uint8
        assert (meta.height, meta.width, meta.num_frames, meta.fps) == (224, 224, CLIP_LEN, 5.0)
        means = frames.reshape(CLIP_LEN, -1).mean(axis=1)
        want = [levels[t] for t in meta.info["image_token"]]
        # frame 0 of GAP_LOG also sits (grey 250) in the second root: the first root must win
        np.testing.assert_allclose(means, want, atol=3)


def test_clip_meta_carries_log_camera_and_per_frame_facts(ingested, fx):
    _, manifest, ds = ingested
    seen_none_scene = False
    for meta, _, _ in read_clips(ds, manifest):
        log = fx.logs[meta.info["log"]]
        info = meta.info
        assert (meta.source, meta.codec, meta.lossless, meta.dataset) == (
            "nuplan",
            "libx264",
            False,
            "nuplan",
        )
        assert info["location"] == log.location and info["logfile"] == log.name
        cam = info["camera"]
        assert cam["channel"] == "CAM_F0" and (cam["width"], cam["height"]) == (320, 180)
        assert cam["intrinsic"] == intrinsic_for(320, 180) and cam["distortion"] == DISTORTION
        assert len(cam["translation"]) == 3 and len(cam["rotation"]) == 4
        k = intrinsic_for(320, 180)
        s = 224 / 180  # central 180x180 square of the 320x180 frame -> 224x224
        np.testing.assert_allclose(
            info["intrinsic_out"],
            [[k[0][0] * s, 0, (k[0][2] - 70) * s], [0, k[1][1] * s, k[1][2] * s], [0, 0, 1]],
        )
        frames = {f.token.hex(): f for f in log.frames}
        for i, tok in enumerate(info["image_token"]):
            f = frames[tok]
            assert info["timestamp_us"][i] == f.timestamp
            assert info["ego_speed"][i] == pytest.approx(math.hypot(f.ego[2], f.ego[3]), abs=1e-3)
            assert info["ego_pose"][i][:2] == [f.ego[0], f.ego[1]]
            lidar = nearest_lidar(log, f.timestamp)
            if lidar is None:
                seen_none_scene = True
                assert info["scene_token"][i] is None and info["num_vehicles"][i] is None
                assert info["tags"][i] == []
            else:
                assert info["scene_token"][i] == lidar[2].hex()
                assert (info["num_vehicles"][i], info["num_pedestrians"][i]) == log.counts[lidar[0]]
                assert info["tags"][i] == log.tags.get(lidar[0], [])
    assert seen_none_scene  # CORRUPT_LOG has no lidar sweep after frame 20


def test_skips_are_recorded_with_reasons(ingested, fx):
    _, manifest, _ = ingested
    skips = {(s["what"], s["reason"].split(" (")[0].split(":")[0]) for s in manifest["skips"]}
    gap, bad = fx.logs[GAP_LOG], fx.logs[CORRUPT_LOG]
    roots = str([str(r.resolve()) for r in fx.roots])

    def frame(log: Log, k: int) -> str:
        return f"frame {log.frames[k].token.hex()} of log {log.name}"

    assert skips == {
        (frame(gap, 30), f"missing JPEG {gap.frames[30].rel} in {roots}"),
        (frame(bad, 10), f"corrupt JPEG {fx.roots[1].resolve() / bad.frames[10].rel}"),
        (frame(bad, 14), f"corrupt JPEG {fx.roots[1].resolve() / bad.frames[14].rel}"),
        (f"log {NO_FRONT_LOG}", "no CAM_F0 images in log"),
        (f"log {NO_JPEG_LOG}", f"none of its 6 CAM_F0 JPEGs is under the sensor roots {roots}"),
        (f"log {NOT_NUPLAN_DB}", "not a readable nuPlan log DB"),
        (f"log {CORRUPT_DB}", "not a readable nuPlan log DB"),
    }
    reasons = {s["what"]: s["reason"] for s in manifest["skips"]}
    assert "no such table: log" in reasons[f"log {NOT_NUPLAN_DB}"]
    assert "file is not a database" in reasons[f"log {CORRUPT_DB}"]
    assert not any("shorter than one clip" in s["reason"] for s in manifest["skips"])  # no misleading 2nd
    assert manifest["totals"]["episodes_skipped"] == 4 and manifest["totals"]["episodes"] == 3


def test_splits_are_fixed_per_log_by_frame_count(ingested, fx):
    cfg, manifest, ds = ingested
    names = [Path(p).stem for p in cfg.source.db_paths]
    assert names == sorted(names) and len(names) == cfg.episodes == 7
    assert all(Path(p).is_absolute() for p in cfg.source.db_paths + cfg.source.sensor_roots)
    counts = [len(fx.logs[n].frames) if n in fx.logs and n != NO_FRONT_LOG else 0 for n in names]
    assert cfg.unit_splits == tuple(assign_splits(counts, cfg.seed, -1))
    for meta, _, split in read_clips(ds, manifest):
        assert split == meta.split == cfg.unit_splits[meta.episode]
    assert manifest["config"]["source"]["db_paths"] == list(cfg.source.db_paths)  # the log list is identity


def test_environment_variables_find_logs_and_sensor_roots(fx, monkeypatch, tmp_path):
    monkeypatch.setenv("NUPLAN_DATA_ROOT", str(fx.data_root))
    cfg = build_config("nuplan")
    assert [Path(p).stem for p in cfg.source.db_paths] == sorted([*fx.logs, NOT_NUPLAN_DB, CORRUPT_DB])
    assert cfg.source.sensor_roots == (str(fx.roots[0].resolve()),)  # the devkit's default sensor root
    assert (cfg.codec, cfg.episodes_per_shard, cfg.source.frame_stride) == ("libx264", 1, 2)
    assert (cfg.source.resolution, cfg.source.fps, cfg.clip_len) == (224, 5.0, 16)

    # the mini archive's own layout (data/cache/mini) is searched too; a log in two folders is read once
    cache = fx.data_root / "data" / "cache" / "mini"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / f"{PLAIN_LOG}.db").write_bytes((fx.db_dir / f"{PLAIN_LOG}.db").read_bytes())
    (cache / "2022.01.01.00.00.00_veh-99_00001_00002.db").write_bytes(b"")
    try:
        names = [Path(p).stem for p in build_config("nuplan").source.db_paths]
        assert len(names) == len(set(names)) == 8 and names == sorted(names)
    finally:
        for p in cache.iterdir():
            p.unlink()

    monkeypatch.setenv("NUPLAN_DB", f"{fx.db_dir / f'{PLAIN_LOG}.db'},{fx.db_dir / f'{GAP_LOG}.db'}")
    monkeypatch.setenv("NUPLAN_SENSOR_ROOT", f"{fx.roots[1]}, {fx.roots[0]}")
    cfg = build_config("nuplan")
    assert [Path(p).stem for p in cfg.source.db_paths] == [GAP_LOG, PLAIN_LOG]
    assert cfg.source.sensor_roots == (str(fx.roots[1].resolve()), str(fx.roots[0].resolve()))  # order kept
    assert build_config("nuplan", {"episodes": 1}).source.db_paths == cfg.source.db_paths[:1]
    # explicit source.* overrides win over the environment
    assert build_config("nuplan", {"source": sources(fx)}).episodes == 7


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "no nuPlan log DBs given: set NUPLAN_DATA_ROOT="),
        ({"NUPLAN_DATA_ROOT": "{tmp}/nope"}, "NUPLAN_DATA_ROOT={tmp}/nope is not a folder"),
        ({"NUPLAN_DATA_ROOT": "{tmp}"}, "no nuPlan log DB folders under NUPLAN_DATA_ROOT={tmp}"),
        ({"NUPLAN_DB": "{tmp}/nope.db"}, "NUPLAN_DB entry {tmp}/nope.db does not exist"),
        ({"NUPLAN_DB": "{tmp}"}, "no .db files found in NUPLAN_DB"),
        ({"NUPLAN_DB": "{db}"}, "no camera sensor root given: set NUPLAN_DATA_ROOT="),
        (
            {"NUPLAN_DB": "{db}", "NUPLAN_SENSOR_ROOT": "{tmp}/cams"},
            "sensor root {tmp}/cams (from NUPLAN_SENSOR_ROOT) is not a folder",
        ),
    ],
)
def test_missing_or_wrong_roots_get_clear_errors(env, message, fx, monkeypatch, tmp_path, capsys):
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(tmp=tmp_path, db=fx.db_dir))
    message = message.format(tmp=tmp_path)
    with pytest.raises(ValueError, match=re.escape(message)):
        build_config("nuplan")
    assert ingest_main(["nuplan", "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "NUPLAN_SENSOR_ROOT=" in err


def test_asking_for_more_logs_than_found_or_negative_is_refused(fx):
    with pytest.raises(ValueError, match="episodes=9 but only 7 nuPlan logs were found"):
        build_config("nuplan", {"episodes": 9, "source": sources(fx)})
    with pytest.raises(ValueError, match="episodes must be >= 0 for nuplan"):
        build_config("nuplan", {"episodes": -1, "source": sources(fx)})


def test_rerun_resumes_and_a_different_log_list_is_refused(fx, tmp_path):
    first = ingest(tmp_path, {"episodes": 2, "clip_len": CLIP_LEN, "source": sources(fx)})
    again = ingest(tmp_path, {"episodes": 2, "clip_len": CLIP_LEN, "source": sources(fx)})
    assert first == again
    with pytest.raises(IngestError, match="different config"):
        ingest(tmp_path, {"clip_len": CLIP_LEN, "source": sources(fx)})


def test_segment_cap_bounds_memory_without_changing_clips(ingested, fx, tmp_path):
    _cfg, manifest, ds = ingested
    capped = build_config(
        "nuplan", {"clip_len": CLIP_LEN, "source": sources(fx, max_segment_frames=CLIP_LEN)}
    )
    log = open_log(capped.source, capped.source.db_paths.index(str(fx.logs[GAP_LOG].db.resolve())), CLIP_LEN)
    segments = log.segments()
    assert iter(segments) is segments  # a lazy iterator: one segment decoded at a time
    assert [s.num_frames for s in segments] == [4, 4, 2, 4, 1, 4]  # 10 | 5 (missing 30) | 4, cut at 4
    out = run_ingest(capped, RunOptions(out=str(tmp_path), executor="local", progress=False))
    tokens = [m.info["image_token"] for m, _, _ in read_clips(tmp_path / "nuplan", out)]
    assert tokens == [m.info["image_token"] for m, _, _ in read_clips(ds, manifest)]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _ObjectScalar:
    def __reduce__(self):
        return np.core.multiarray.scalar, (np.dtype(object), ["not", "a", "number"])


def test_calibration_blobs_load_without_the_devkit():
    blobs = calibration_blobs(1920, 1080)
    assert "nuplan" not in sys.modules  # the fixture's stand-in devkit module is gone again
    assert load_calibration(blobs["translation"], "translation") == pytest.approx([1.672, -0.012, 1.553])
    rotation = load_calibration(blobs["rotation"], "rotation")
    assert len(rotation) == 4 and all(type(v) is float for v in rotation)
    assert load_calibration(blobs["intrinsic"], "intrinsic") == intrinsic_for(1920, 1080)
    assert load_calibration(blobs["distortion"], "distortion") == DISTORTION


def test_malicious_or_malformed_calibration_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    with devkit_types() as dt:
        wrapped = pickle.dumps(dt.Translation([1.0, 2.0, _Evil(marker)]), protocol=5)
    cases = {
        pickle.dumps(_Evil(marker), protocol=5): "refused to load posix.system",
        wrapped: "refused to load posix.system",
        pickle.dumps(_ObjectScalar(), protocol=5): "refused",
        pickle.dumps(eval, protocol=5): "refused to load builtins.eval",
        pickle.dumps([1.0, 2.0], protocol=5): "should be a list of 3",
        pickle.dumps([1.0, 2.0, float("nan")], protocol=5): "not a finite number",
        b"\x80\x05garbage": "not a readable calibration pickle",
    }
    for blob, message in cases.items():
        with pytest.raises(CalibrationError, match=message):
            load_calibration(blob, "translation")
    assert not marker.exists()

    # in a log: the whole log is skipped with the reason, and nothing runs
    db_dir, roots = tmp_path / "db", [tmp_path / "cams"]
    blobs = {**calibration_blobs(320, 180), "intrinsic": pickle.dumps(_Evil(marker), protocol=5)}
    write_log(db_dir, roots, "2021.05.12.22.00.38_veh-35_01008_01518", 12, blobs=blobs)
    manifest = ingest(
        tmp_path / "out",
        {"clip_len": CLIP_LEN, "source": {"db_paths": [str(db_dir)], "sensor_roots": [str(roots[0])]}},
    )
    assert [s["reason"] for s in manifest["skips"]] == [
        "camera calibration refused: refused to load posix.system from a calibration blob"
    ]
    assert not marker.exists()


def _jpeg(path: Path, pixels: np.ndarray) -> str:
    Image.fromarray(pixels).save(path, "JPEG", quality=90)
    return str(path)


def test_decode_crops_the_centre_and_draft_decoding_stays_close(tmp_path):
    pixels = flat_frame(120, 1920, 1080)
    pixels[:, :400] = pixels[:, -400:] = (255, 0, 0)  # red well outside the central 1080x1080 square
    path = _jpeg(tmp_path / "f.jpg", pixels)
    fast = decode_frame(path, NuplanConfig())
    full = decode_frame(path, NuplanConfig(jpeg_draft=False, resample="lanczos"))
    assert fast.shape == full.shape == (224, 224, 3) and fast.dtype == np.uint8
    assert fast[..., 0].max() < 200 and full[..., 0].max() < 200  # the crop drops the red bands
    mse = np.mean((fast.astype(float) - full) ** 2)
    assert 10 * np.log10(255**2 / mse) > 35
    squashed = decode_frame(path, NuplanConfig(resize="squash"))
    assert squashed.shape == (224, 224, 3) and squashed[:, :5, 0].min() > 200  # the squash keeps them


def test_plan_runs_and_nearest():
    ts = np.array([0, 100, 200, 300, 700, 800, 900, 1000, 1100], dtype=np.int64) * 1000
    assert [r.tolist() for r in plan_runs(ts, 2, 150_000)] == [[0, 2], [4, 6, 8]]
    assert [r.tolist() for r in plan_runs(ts, 1, 500_000)] == [list(range(9))]
    assert plan_runs(np.zeros(0, np.int64), 2, 150_000) == []
    lidar = np.array([0, 50, 100, 400], dtype=np.int64)
    assert nearest(lidar, np.array([24, 26, 75, 250, 460, 461]), 60).tolist() == [0, 1, 1, -1, 3, -1]
    assert nearest(np.zeros(0, np.int64), np.array([1]), 50).tolist() == [-1]


def test_bad_source_settings_are_refused():
    for override, message in [
        ({"frame_stride": 0}, "frame_stride must be an int >= 1"),
        ({"resize": "crop"}, "resize must be one of"),
        ({"resolution": 225}, "must be even"),
        ({"max_gap_ms": 0}, "max_gap_ms must be > 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            NuplanConfig(**override)


def test_resume_after_kill_matches_a_clean_run(tmp_path, python_cmd):
    db_dir, roots = tmp_path / "db", [tmp_path / "cams"]
    for i in range(12):
        write_log(db_dir, roots, f"2021.06.{i + 1:02d}.10.00.00_veh-35_00001_00100", 60)
    env = {**os.environ, "NUPLAN_DB": str(db_dir), "NUPLAN_SENSOR_ROOT": str(roots[0])}
    env.pop("NUPLAN_DATA_ROOT", None)
    args = [*python_cmd, "-m", "ingest", "nuplan", "--executor", "local", "--no-progress", "--clip-len", "4"]
    out_a, out_b = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(
        [*args, "--out", str(out_a)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    progress = out_a / "nuplan" / ".progress"
    deadline = time.time() + 60
    while time.time() < deadline and not list(progress.glob("block-*.json")):
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(progress.glob("block-*.json")))
    assert 1 <= done < 12, "the run should have been killed part-way"
    assert not (out_a / "nuplan" / "manifest.json").exists()
    subprocess.run([*args, "--out", str(out_a)], cwd=REPO, env=env, check=True, capture_output=True)
    subprocess.run([*args, "--out", str(out_b)], cwd=REPO, env=env, check=True, capture_output=True)
    a = json.loads((out_a / "nuplan" / "manifest.json").read_text())
    b = json.loads((out_b / "nuplan" / "manifest.json").read_text())
    assert a == b and a["totals"]["clips"] == 12 * 7  # 30 strided frames per log -> 7 clips of 4
    assert not list((out_a / "nuplan").rglob("*.tmp"))


@pytest.mark.ray
@pytest.mark.slow
def test_ray_executor_gives_the_same_shards(ingested, fx, tmp_path, ray_session):
    cfg, manifest, _ = ingested
    ray_manifest = run_ingest(cfg, RunOptions(out=str(tmp_path), workers=2, progress=False))
    assert ray_manifest == manifest


def test_clip_video_is_valid_h264(ingested):
    _, manifest, ds = ingested
    _meta, video, _ = read_clips(ds, manifest)[0]
    import av

    with av.open(io.BytesIO(video)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"


def test_lossy_clip_encoding_is_deterministic():
    """Camera clips are lossy H.264; the same frames must still give the same bytes (resume, checksums).
    x264's AVX-512 code broke this for about half of such clips (see shards.video)."""
    yy, xx = np.mgrid[0:224, 0:224].astype(np.float32)
    churn = []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        base = [(xx * 0.3, yy * 0.2 + 40, 120 + 30 * np.sin((xx + 3 * t * seed) / 15)) for t in range(16)]
        noisy = [np.stack(b, -1) + 2 * t + rng.normal(0, 3, (224, 224, 3)) for t, b in enumerate(base)]
        frames = np.clip(np.stack(noisy), 0, 255).astype(np.uint8)
        outputs = set()
        for i in range(5):
            churn.append(bytearray(3000 + 97 * i))  # vary the heap between encodes
            outputs.add(encode_frames(frames, "libx264", fps=5.0, crf=18))
        assert len(outputs) == 1, f"clip {seed}: {len(outputs)} different encodings of the same frames"


def test_values_of_the_wrong_type_skip_the_log_instead_of_crashing(tmp_path):
    db_dir, roots = tmp_path / "db", [tmp_path / "cams"]
    log = write_log(db_dir, roots, "2021.05.12.22.00.38_veh-35_01008_01518", 12)
    with closing(sqlite3.connect(log.db)) as db:  # SQLite does not enforce column types
        db.execute("UPDATE image SET timestamp = 'yesterday' WHERE token = ?", (log.frames[3].token,))
        db.commit()
    source = {"db_paths": [str(db_dir)], "sensor_roots": [str(roots[0])]}
    manifest = ingest(tmp_path / "out", {"clip_len": CLIP_LEN, "source": source})
    (skip,) = manifest["skips"]
    assert skip["what"] == f"log {log.name}"
    assert skip["reason"].startswith("not a nuPlan log DB: unexpected values in its image")
