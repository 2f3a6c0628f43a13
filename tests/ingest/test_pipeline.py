"""The ingest pipeline end to end (in-process executor): counts, splits, determinism, resume, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ingest import block as block_mod
from ingest.block import Unit, run_block
from ingest.config import RunOptions, build_config
from ingest.episode import Episode
from ingest.pipeline import IngestError, run_ingest
from ingest.splits import assign_splits
from shards.format import SPLITS, ClipMeta, npy_load
from shards.manifest import load_manifest, read_block_records
from shards.video import decode_video
from shards.writer import sha256_file
from tests.helpers import REPO

SMALL = {"episodes": 20, "clip_len": 8, "episodes_per_shard": 10, "source": {"episode_len": 24}}


def small_cfg(**extra):
    return build_config("multigrid", {**SMALL, **extra})


def ingest(tmp_path, cfg=None, **opts):
    return run_ingest(
        cfg or small_cfg(), RunOptions(out=str(tmp_path), executor="local", progress=False, **opts)
    )


def read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    """Group tar members by sample key with the standard library only."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def test_assign_splits_hits_80_10_10_by_frames():
    assert Counter(assign_splits([100] * 10, 0, 0)) == {"train": 8, "val": 1, "test": 1}
    rng = np.random.default_rng(0)
    totals = Counter()
    for block in range(2000):
        lengths = rng.integers(50, 500, 10).tolist()
        splits = assign_splits(lengths, 3, block)
        assert splits == assign_splits(lengths, 3, block)  # deterministic
        for n, s in zip(lengths, splits, strict=True):
            totals[s] += n
    total = sum(totals.values())
    for split, target in zip(SPLITS, (0.8, 0.1, 0.1), strict=True):
        assert abs(totals[split] / total - target) < 0.01


def test_manifest_counts_equal_tar_contents(tmp_path):
    manifest = ingest(tmp_path)
    ds = tmp_path / "multigrid"
    assert manifest == load_manifest(ds)
    assert manifest["totals"] == {
        "episodes": 20,
        "episodes_skipped": 0,
        "clips": 60,
        "frames": 480,
        "dropped_tail_frames": 0,
        "shards": 6,
    }
    episodes_by_split: dict[str, set[int]] = {s: set() for s in SPLITS}
    for shard in manifest["shards"]:
        path = ds / shard["path"]
        assert sha256_file(path) == shard["sha256"]
        samples = read_tar(path)
        assert len(samples) == shard["num_samples"]
        for key, members in samples.items():
            assert set(members) == {"mp4", "actions.npy", "positions.npy", "json"}
            meta = ClipMeta.from_json(members["json"])
            assert meta.split == shard["split"] and key == f"multigrid-{meta.episode:08d}-{meta.clip:04d}"
            assert meta.lossless and (meta.height, meta.width, meta.num_frames) == (128, 128, 8)
            episodes_by_split[meta.split].add(meta.episode)
    for split in SPLITS:
        assert manifest["splits"][split]["episodes"] == len(episodes_by_split[split])
    # no episode in two splits; 80/10/10 of equal-length episodes
    assert sum(len(v) for v in episodes_by_split.values()) == 20
    assert [len(episodes_by_split[s]) for s in SPLITS] == [16, 2, 2]
    assert [manifest["splits"][s]["frame_fraction"] for s in SPLITS] == [0.8, 0.1, 0.1]


def test_frames_actions_positions_round_trip(tmp_path):
    from ingest.block import episode_seed
    from ingest.multigrid import render_episode

    cfg = small_cfg(episodes=10)
    ingest(tmp_path, cfg)
    episode = render_episode(cfg.source, episode_seed(cfg.seed, 3))
    for shard in sorted((tmp_path / "multigrid").rglob("*.tar")):
        for members in read_tar(shard).values():
            meta = ClipMeta.from_json(members["json"])
            if meta.episode != 3:
                continue
            lo = meta.start_frame
            np.testing.assert_array_equal(decode_video(members["mp4"]), episode.frames[lo : lo + 8])
            np.testing.assert_array_equal(npy_load(members["actions.npy"]), episode.actions[lo : lo + 8])
            np.testing.assert_array_equal(npy_load(members["positions.npy"]), episode.positions[lo : lo + 8])


def test_same_config_gives_byte_identical_shards(tmp_path):
    a, b = ingest(tmp_path / "a"), ingest(tmp_path / "b")
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    c = ingest(tmp_path / "c", small_cfg(seed=1))
    assert [s["sha256"] for s in a["shards"]] != [s["sha256"] for s in c["shards"]]


def test_rerun_rewrites_nothing_and_repairs_a_missing_shard(tmp_path):
    ingest(tmp_path)
    ds = tmp_path / "multigrid"
    tars = sorted(ds.rglob("*.tar"))
    stamps = {p: p.stat().st_mtime_ns for p in tars}
    ingest(tmp_path)
    assert {p: p.stat().st_mtime_ns for p in tars} == stamps
    tars[0].unlink()
    manifest = ingest(tmp_path)
    assert tars[0].exists() and sha256_file(tars[0]) == next(
        s["sha256"] for s in manifest["shards"] if s["path"].endswith(tars[0].name)
    )


def test_changed_config_is_refused_then_overwritten(tmp_path):
    ingest(tmp_path)
    with pytest.raises(IngestError, match=r"(?s)different config.*episodes: 20 -> 30.*--overwrite"):
        ingest(tmp_path, small_cfg(episodes=30))
    manifest = ingest(tmp_path, small_cfg(episodes=30), overwrite=True)
    assert manifest["totals"]["episodes"] == 30
    assert len(list((tmp_path / "multigrid").rglob("*.tar"))) == manifest["totals"]["shards"]


def test_short_episodes_are_recorded_as_skips(tmp_path, monkeypatch):
    real = block_mod.UNIT_LOADERS["multigrid"]

    def load(cfg, index):  # every third episode ends before one clip is full
        unit = real(cfg, index)
        if index % 3 == 0:
            ep = unit.segments[0]
            unit = Unit(
                [Episode(ep.frames[:5], ep.actions[:5], ep.positions[:5], ep.fps, ep.info)], name=unit.name
            )
        return unit

    monkeypatch.setitem(block_mod.UNIT_LOADERS, "multigrid", load)
    cfg = small_cfg(episodes=10)
    record = run_block(cfg, 0, tmp_path / "multigrid")
    skipped = [e.episode for e in record.episodes if e.split is None]
    assert skipped == [0, 3, 6, 9]
    assert [s.what for s in record.skips] == ["episode 0", "episode 3", "episode 6", "episode 9"]
    assert all("shorter than one clip: 5 frames < clip_len 8" in s.reason for s in record.skips)
    assert sum(s.num_samples for s in record.shards) == 6 * 3


def test_resume_after_kill_finishes_without_duplicates(tmp_path, python_cmd):
    args = [
        *python_cmd,
        "-m",
        "ingest",
        "multigrid",
        "--executor",
        "local",
        "--no-progress",
        "--episodes",
        "60",
        "--clip-len",
        "8",
        "episodes_per_shard=5",
        "source.episode_len=24",
        "source.tile_size=8",  # 64x64 frames: the resume logic does not depend on the size
    ]
    out_a, out_b = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(
        [*args, "--out", str(out_a)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    progress = out_a / "multigrid" / ".progress"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(progress.glob("block-*.json"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(read_block_records(out_a / "multigrid"))
    assert 3 <= done < 12, "the run should have been killed part-way"
    assert not (out_a / "multigrid" / "manifest.json").exists()
    for tar in (out_a / "multigrid").rglob("*.tar"):  # every final name holds a complete tar
        read_tar(tar)
    subprocess.run([*args, "--out", str(out_a)], cwd=REPO, check=True, capture_output=True)
    subprocess.run([*args, "--out", str(out_b)], cwd=REPO, check=True, capture_output=True)
    a = json.loads((out_a / "multigrid" / "manifest.json").read_text())
    b = json.loads((out_b / "multigrid" / "manifest.json").read_text())
    assert a == b  # same shards, same checksums, same counts as an uninterrupted run
    keys = [k for tar in (out_a / "multigrid").rglob("*.tar") for k in read_tar(tar)]
    assert len(keys) == len(set(keys)) == a["totals"]["clips"]
    assert not list((out_a / "multigrid").rglob("*.tmp"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nosuchgame"], "unknown dataset 'nosuchgame'. Valid: bigfish, leaper, multigrid"),
        (["multigrid", "--episodes", "0"], "episodes must be >= 1, got 0"),
        (["multigrid", "--clip-len", "100"], "clip_len 100 is longer than the episode cap 64"),
        (["multigrid", "source.num_agentz=3"], "unknown config key"),
        (["bigfish", "source.game=pacman"], "pacman"),
    ],
)
def test_bad_requests_get_clear_errors(argv, message, capsys, tmp_path):
    from ingest.__main__ import main

    assert main([*argv, "--out", str(tmp_path), "--executor", "local"]) == 2
    assert message in capsys.readouterr().err


def test_unwritable_out_is_reported(tmp_path, capsys):
    from ingest.__main__ import main

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["multigrid", "--episodes", "1", "--out", str(blocker / "out"), "--executor", "local"]) == 2
    assert "is not writable" in capsys.readouterr().err
