"""Streaming clip loader: exact rank x worker split, determinism, endless epochs, corrupt data, resume,
windows and layouts. Ranks are simulated with rank/world_size arguments in one process next to real
DataLoader workers; one torchrun test checks the split under a real gloo process group."""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import tarfile
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from ingest.config import RunOptions, build_config
from ingest.pipeline import run_ingest
from shards.decode import decode_samples, window_start
from shards.format import ACTIONS_KEY
from shards.loader import (
    ClipDataset,
    ClipLoader,
    Part,
    collate_clips,
    resolve_rank,
    select_samples,
    shuffle_samples,
    skip_consumed,
    split_by_rank,
    split_by_worker,
)
from shards.tar import RawSample, ShardInfo, read_samples
from shards.writer import ShardWriter
from tests.helpers import REPO

# 24 episodes of 16 frames -> 48 clips of 8 frames; 3 episodes per block -> 8 train shards of 4-6 clips.
CFG = {"episodes": 24, "clip_len": 8, "episodes_per_shard": 3, "source": {"episode_len": 16}}
TRAIN = dict(infinite=True, shuffle=True, buffer_size=5, window=4)
# torch warns when a DataLoader has more workers than this 2-core machine has cores.
many_workers = pytest.mark.filterwarnings("ignore:This DataLoader will create")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("loader")
    manifest = run_ingest(
        build_config("multigrid", CFG), RunOptions(out=str(out), executor="local", progress=False)
    )
    ds = out / "multigrid"
    keys = set()
    for shard in manifest["shards"]:
        if shard["split"] == "train":
            with tarfile.open(ds / shard["path"]) as tar:
                keys |= {m.name.split(".", 1)[0] for m in tar.getmembers()}
    return ds, manifest, keys


def train_paths(data) -> list[Path]:
    ds, manifest, _ = data
    return [ds / s["path"] for s in manifest["shards"] if s["split"] == "train"]


def take(loader, batches: int | None = None) -> list[dict]:
    return list(itertools.islice(loader, batches))


def keys_of(batches: list[dict]) -> list[str]:
    return [k for b in batches for k in b["key"]]


def rank_loaders(source, world: int, workers: int, batch_size: int = 2, **kw) -> list[ClipLoader]:
    split = "train" if isinstance(source, Path) else None
    return [
        ClipLoader(ClipDataset(source, split, rank=r, world_size=world, **kw), batch_size, workers)
        for r in range(world)
    ]


# ----------------------------------------------------------------------------------- pure stages


@pytest.mark.parametrize("num_shards", [1, 2, 3, 5, 8, 13])
def test_split_gives_every_sample_to_exactly_one_rank_and_worker(num_shards):
    rng = np.random.default_rng(num_shards)
    shards = tuple(ShardInfo(f"s{i}", int(rng.integers(0, 7))) for i in range(num_shards))
    everything = Counter((s.path, j) for s in shards for j in range(s.num_samples))
    for world, workers, epoch in itertools.product((1, 2, 3), (1, 2, 4), (0, 1, 5)):
        seen = Counter()
        for rank in range(world):
            for worker in range(workers):
                part = split_by_worker(split_by_rank(Part(shards), rank, world), worker, workers)
                flat = [(s.path, j) for s in part.shards for j in range(s.num_samples)]
                seen.update(x for i, x in enumerate(flat) if part.takes(i, epoch))
                if num_shards >= world * workers:  # enough shards: whole shards, nothing read twice
                    assert part.mod == 1
        assert seen == everything, (world, workers, epoch)


def test_shuffle_buffer_is_a_seeded_permutation():
    items = list(range(50))
    out = list(shuffle_samples(items, 8, np.random.default_rng(0)))
    assert sorted(out) == items and out != items
    assert out == list(shuffle_samples(items, 8, np.random.default_rng(0)))
    assert out != list(shuffle_samples(items, 8, np.random.default_rng(1)))
    assert list(shuffle_samples(items, 0, np.random.default_rng(0))) == items
    assert sorted(shuffle_samples(items[:3], 8, np.random.default_rng(0))) == items[:3]  # buffer never fills


def test_select_and_skip_stages():
    raw = [RawSample("s", f"k{i}") for i in range(10)]
    part = Part((), mod=3, rem=1)
    assert [s.key for s in select_samples(raw, part, epoch=0)] == ["k1", "k4", "k7"]
    assert [s.key for s in select_samples(raw, part, epoch=1)] == ["k0", "k3", "k6", "k9"]  # rotated
    kept = list(skip_consumed(raw, 7, slot=1, num_slots=2, epoch=3))
    assert [s.key for s in kept] == ["k7", "k8", "k9"] and kept[0].cursor == (1, 2, 3, 8)


def test_window_start_is_seeded_per_key_and_in_range():
    starts = [window_start(f"k{i}", 8, 3, seed=0, epoch=0) for i in range(50)]
    assert set(starts) == set(range(6))
    assert starts == [window_start(f"k{i}", 8, 3, seed=0, epoch=0) for i in range(50)]
    assert starts != [window_start(f"k{i}", 8, 3, seed=0, epoch=1) for i in range(50)]
    assert window_start("k", 8, None, 0, 0) == 0 and window_start("k", 8, 8, 0, 0) == 0


def test_rank_comes_from_arguments_then_process_group_then_env(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_rank() == (0, 1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert resolve_rank() == (1, 4)
    assert resolve_rank(0, 2) == (0, 2)  # arguments win over the environment
    with pytest.raises(ValueError, match="outside"):
        resolve_rank(2, 2)
    with pytest.raises(ValueError, match="both"):
        resolve_rank(rank=0)


def test_collate_stacks_tensors_and_keeps_lists():
    def sample(i, actions=True):
        s = {"frames": torch.full((4, 2, 2, 3), i, dtype=torch.uint8), "key": f"k{i}", "meta": {"i": i}}
        s.update(shard="a.tar", start=i, cursor=(0, 1, 0, i + 1))
        return {**s, "actions": torch.arange(4) + i} if actions else s

    batch = collate_clips([sample(0), sample(1)])
    assert batch["frames"].shape == (2, 4, 2, 2, 3) and batch["frames"][1].eq(1).all()
    assert batch["actions"].tolist() == [[0, 1, 2, 3], [1, 2, 3, 4]] and "positions" not in batch
    assert batch["key"] == ["k0", "k1"] and batch["meta"] == [{"i": 0}, {"i": 1}]
    assert batch["shard"] == ["a.tar", "a.tar"]
    assert batch["start"].tolist() == [0, 1] and batch["cursor"] == [(0, 1, 0, 1), (0, 1, 0, 2)]
    assert "actions" not in collate_clips([sample(0, False), sample(1, False)])
    with pytest.raises(ValueError, match="mixes"):
        collate_clips([sample(0), sample(1, False)])


# ------------------------------------------------------------------------------ split over shards


@pytest.mark.parametrize("shuffle", [False, True])
def test_one_pass_reads_every_sample_once_over_2_ranks_x_2_workers(data, shuffle):
    ds_dir, _, keys = data
    loaders = rank_loaders(ds_dir, 2, 2, shuffle=shuffle, buffer_size=4 * shuffle, seed=3)
    seen = Counter(k for loader in loaders for k in keys_of(take(loader)))
    assert seen == Counter(keys)
    assert sum(loader.dataset.expected_samples() for loader in loaders) == len(keys)
    assert sum(loader.dataset.stats["samples"] for loader in loaders) == len(keys)  # across workers


@pytest.mark.parametrize("num_shards", [1, 3])
def test_fewer_shards_than_ranks_x_workers(data, num_shards):
    """3 shards: rank 0 reads 2 whole shards, rank 1's single shard is split by sample between its
    workers; 1 shard: every reader reads it and keeps every 4th sample. Both exact; infinite streams
    keep going on every rank and every worker."""
    paths = train_paths(data)[:num_shards]
    with tarfile.open(paths[0]) as tar:
        first = {m.name.split(".", 1)[0] for m in tar.getmembers()}
    expected = set(first)
    for p in paths[1:]:
        with tarfile.open(p) as tar:
            expected |= {m.name.split(".", 1)[0] for m in tar.getmembers()}
    one_pass = Counter(k for loader in rank_loaders(paths, 2, 2) for k in keys_of(take(loader)))
    assert one_pass == Counter(expected)

    seen_epoch0, slots = Counter(), set()
    for loader in rank_loaders(paths, 2, 2, batch_size=1, infinite=True, shuffle=True):
        batches = take(loader, 4 * len(expected))
        for b in batches:
            slot, _, epoch, _ = b["cursor"][0]
            slots.add((loader.dataset.rank, slot))
            seen_epoch0.update(b["key"] if epoch == 0 else [])
    assert slots == {(0, 0), (0, 1), (1, 0), (1, 1)}  # nobody starves
    assert seen_epoch0 == Counter(expected)  # epoch 0 still split exactly once


def test_expected_samples_per_rank_match_the_stream(data):
    ds_dir, _, keys = data
    for world in (3, 5, 12):  # 8 shards: split by shard, by shard unevenly, by sample
        datasets = [
            ClipDataset(ds_dir, "train", shuffle=True, rank=r, world_size=world) for r in range(world)
        ]
        counts = [len(list(d)) for d in datasets]
        assert counts == [d.expected_samples() for d in datasets] and sum(counts) == len(keys)


@many_workers
@pytest.mark.timeout(60)
def test_more_readers_than_samples_does_not_hang(data):
    """One shard of 4-6 samples over 2 ranks x 4 workers: epochs rotate the sample assignment, so
    every infinite stream still yields."""
    paths = train_paths(data)[1:2]
    for loader in rank_loaders(paths, 2, 4, batch_size=1, infinite=True):
        assert len(take(loader, 10)) == 10


def test_order_is_deterministic_for_a_seed(data):
    ds_dir, _, _ = data

    def run(seed):
        loader = ClipLoader(ClipDataset(ds_dir, "train", seed=seed, **TRAIN), 3, num_workers=2)
        return [(k, s) for b in take(loader, 8) for k, s in zip(b["key"], b["start"].tolist(), strict=True)]

    first = run(0)
    assert first == run(0)
    assert first != run(1)


def test_infinite_mode_crosses_epochs_and_reshuffles(data):
    ds_dir, _, keys = data
    ds = ClipDataset(ds_dir, "train", infinite=True, shuffle=True)
    samples = list(itertools.islice(ds, 3 * len(keys)))
    epochs = [samples[e * len(keys) : (e + 1) * len(keys)] for e in range(3)]
    orders = [[s["key"] for s in epoch] for epoch in epochs]
    for e, order in enumerate(orders):
        assert sorted(order) == sorted(keys) and {s["cursor"][2] for s in epochs[e]} == {e}
    assert orders[0] != orders[1] != orders[2]


# --------------------------------------------------------------------------------- corrupt data


def corrupt_shards(data, tmp_path) -> tuple[list[Path], set[str]]:
    """A truncated tar, a tar with garbage video / missing members / a bad array, and a good tar.
    Returns the paths and the keys that must survive."""
    good, source, victim = train_paths(data)[:3]
    with tarfile.open(source) as tar:
        members = [(m.name.split(".", 1), tar.extractfile(m).read()) for m in tar.getmembers()]
    samples: dict[str, dict[str, bytes]] = {}
    for (key, ext), payload in members:
        samples.setdefault(key, {})[ext] = payload
    keys = list(samples)
    samples[keys[0]]["mp4"] = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8  # garbage video
    del samples[keys[1]]["json"]  # no meta
    del samples[keys[2]][ACTIONS_KEY]  # meta says has_actions
    samples[keys[3]]["positions.npy"] = b"not an npy file"
    mixed = tmp_path / "mixed.tar"
    with ShardWriter(mixed) as writer:
        for key, sample in samples.items():
            writer.write(key, sample)
    # Cut the victim inside its second sample's video: the first sample survives, the second is dropped.
    with tarfile.open(victim) as tar:
        infos = tar.getmembers()
    second_video = next(m for m in infos if m.name.endswith(".mp4") and m is not infos[0])
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(victim.read_bytes()[: second_video.offset_data + 100])
    with tarfile.open(good) as tar:
        good_keys = {m.name.split(".", 1)[0] for m in tar.getmembers()}
    survivors = good_keys | set(keys[4:]) | {infos[0].name.split(".", 1)[0]}
    return [truncated, mixed, good], survivors


def test_corrupt_samples_are_skipped_counted_and_logged(data, tmp_path, caplog):
    paths, survivors = corrupt_shards(data, tmp_path)
    ds = ClipDataset(paths)
    with caplog.at_level(logging.WARNING, logger="shards"):
        keys = [s["key"] for s in ds]
    assert sorted(keys) == sorted(survivors)
    assert ds.stats == {
        "samples": len(survivors),
        "skipped": 5,
        "skipped_by_reason": {"tar": 1, "missing": 2, "meta": 0, "array": 1, "decode": 1, "shape": 0},
        "shard_errors": 1,
    }
    log = caplog.text
    assert "truncated.tar broke after 1 samples" in log and "unexpected end of data" in log
    assert "mixed.tar (decode)" in log and "mixed.tar (array)" in log and "has_actions" in log

    # Counted across DataLoader worker processes too (the counters live in shared memory).
    loader = ClipLoader(ClipDataset(paths), batch_size=2, num_workers=2)
    assert sorted(keys_of(take(loader))) == sorted(survivors)
    assert loader.dataset.stats["skipped"] == 5 and loader.dataset.stats["shard_errors"] == 1


def test_spawned_workers_share_counters_and_report_positions(data, tmp_path):
    """Under spawn (macOS, and Python 3.14's default forkserver behaves alike) workers get the dataset
    pickled: the shared counters and the cursors must survive that."""
    paths, survivors = corrupt_shards(data, tmp_path)
    loader = ClipLoader(ClipDataset(paths), batch_size=2, num_workers=2, multiprocessing_context="spawn")
    assert sorted(keys_of(take(loader))) == sorted(survivors)
    assert loader.dataset.stats["skipped"] == 5 and loader.dataset.stats["samples"] == len(survivors)
    assert loader.state_dict()["num_slots"] == 2


def test_missing_shard_and_manifest_count_mismatch_are_shard_errors(data, tmp_path):
    _, manifest, _ = data
    good = train_paths(data)[0]
    count = next(s["num_samples"] for s in manifest["shards"] if s["split"] == "train")
    ds = ClipDataset([tmp_path / "gone.tar", good])
    assert len(list(ds)) == count and ds.stats["shard_errors"] == 1
    stats_sink = ClipDataset([good])._stats
    raw = list(read_samples([ShardInfo(str(good), count + 1)], stats_sink))
    assert len(raw) == count and stats_sink.as_dict()["shard_errors"] == 1


def test_format_version_mismatch_stops_instead_of_skipping(data):
    good = train_paths(data)[0]
    raw = next(read_samples([ShardInfo(str(good))]))
    meta = json.loads(raw.members["json"])
    raw.members["json"] = json.dumps({**meta, "format_version": 99}).encode()
    with pytest.raises(ValueError, match="format_version 99"):
        list(decode_samples([raw]))


# ------------------------------------------------------------------------------------------ resume


def roundtrip(state):
    return json.loads(json.dumps(state))  # checkpoints hold plain JSON-able data


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_exactly_like_an_uninterrupted_run(data, workers):
    """Shuffle buffer + windows + endless epochs; 20 batches of 3 go well into the second epoch."""
    ds_dir, _, _ = data
    full = take(ClipLoader(ClipDataset(ds_dir, "train", **TRAIN), 3, workers), 20)

    first = ClipLoader(ClipDataset(ds_dir, "train", **TRAIN), 3, workers)
    head = take(first, 7)  # odd: with 2 workers the resumed loader must start at worker slot 1
    state = roundtrip(first.state_dict())
    assert state["consumed"] == 21 and state["num_slots"] == max(workers, 1)
    resumed = ClipLoader(ClipDataset(ds_dir, "train", **TRAIN), 3, workers)
    resumed.load_state_dict(state)
    tail = take(resumed, 13)

    assert keys_of(head + tail) == keys_of(full)
    for a, b in zip(head + tail, full, strict=True):
        assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["actions"], b["actions"])
        assert a["start"].tolist() == b["start"].tolist()
    assert {c[2] for b in tail for c in b["cursor"]} >= {1}  # the run went into epoch 1

    # Resume twice: the state after the resumed run continues the same way.
    again = ClipLoader(ClipDataset(ds_dir, "train", **TRAIN), 3, workers)
    again.load_state_dict(roundtrip(resumed.state_dict()))
    longer = take(ClipLoader(ClipDataset(ds_dir, "train", **TRAIN), 3, workers), 23)
    assert keys_of(take(again, 3)) == keys_of(longer[20:])


def test_one_pass_resume_reads_the_rest_exactly_once(data):
    ds_dir, _, keys = data
    loaders = rank_loaders(ds_dir, 2, 2, batch_size=2, shuffle=True, buffer_size=3)
    consumed = Counter(k for loader in loaders for k in keys_of(take(loader, 3)))
    states = [roundtrip(loader.state_dict()) for loader in loaders]
    rest = Counter()
    for loader in rank_loaders(ds_dir, 2, 2, batch_size=2, shuffle=True, buffer_size=3):
        loader.load_state_dict(states)  # the gather_states() form: every rank's state in a list
        rest.update(keys_of(take(loader)))
    assert consumed + rest == Counter(keys) and sum(consumed.values()) == 12

    done = ClipLoader(ClipDataset(ds_dir, "train"), 4, 2)
    take(done)
    finished = ClipLoader(ClipDataset(ds_dir, "train"), 4, 2)
    finished.load_state_dict(roundtrip(done.state_dict()))
    assert take(finished) == []  # a finished pass stays finished (precompute reruns do nothing)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_new_iteration_continues_an_infinite_stream_and_repeats_a_pass(data, workers):
    ds_dir, _, keys = data
    straight = keys_of(take(ClipLoader(ClipDataset(ds_dir, "train", **TRAIN), 3, workers), 8))
    loader = ClipLoader(ClipDataset(ds_dir, "train", **TRAIN), 3, workers)
    assert keys_of(take(loader, 3)) + keys_of(take(loader, 5)) == straight  # e.g. after an eval break

    evaluation = ClipLoader(ClipDataset(ds_dir, "train", shuffle=True), 4, workers)
    first, second = keys_of(take(evaluation)), keys_of(take(evaluation))
    assert sorted(first) == sorted(second) == sorted(keys)


@many_workers
def test_resume_refuses_another_stream_or_layout(data):
    ds_dir, _, _ = data
    loader = ClipLoader(ClipDataset(ds_dir, "train", **TRAIN), 2, 2)
    take(loader, 3)
    state = roundtrip(loader.state_dict())
    with pytest.raises(ValueError, match="seed"):
        ClipDataset(ds_dir, "train", **{**TRAIN, "seed": 1}).load_state_dict(state)
    with pytest.raises(ValueError, match="rank 0 of 1, this is rank 0 of 2"):
        ClipDataset(ds_dir, "train", rank=0, world_size=2, **TRAIN).load_state_dict(state)
    with pytest.raises(ValueError, match="2 DataLoader worker slot"):
        ClipLoader(ClipDataset(ds_dir, "train", **TRAIN), 2, 3).load_state_dict(state)
    with pytest.raises(
        ValueError, match="2 DataLoader worker slot"
    ):  # plain DataLoader: caught in the worker
        ds = ClipDataset(ds_dir, "train", **TRAIN)
        ds.load_state_dict(state)
        take(torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1, collate_fn=collate_clips), 1)

    # Infinite mode may change the layout on request: every worker restarts at the next epoch.
    lenient = ClipLoader(ClipDataset(ds_dir, "train", rank=1, world_size=2, **TRAIN), 2, 1)
    lenient.load_state_dict(state, strict=False)
    epochs_before = max(e for e, _ in state["slots"])
    assert {c[2] for c in take(lenient, 1)[0]["cursor"]} == {epochs_before + 1}


# --------------------------------------------------------------------------------- windows, layouts


def test_windows_crop_frames_actions_and_positions_together(data):
    ds_dir, _, _ = data
    full = {s["key"]: s for s in ClipDataset(ds_dir, "train")}
    windowed = list(ClipDataset(ds_dir, "train", window=5, seed=7))
    assert len(windowed) == len(full)
    for s in windowed:
        ref, lo = full[s["key"]], s["start"]
        assert Path(s["shard"]).parent.name == "train" and s["shard"] == ref["shard"]
        assert 0 <= lo <= 3 and s["meta"] == ref["meta"]
        assert s["frames"].shape == (5, 128, 128, 3) and s["frames"].dtype == torch.uint8
        assert s["actions"].shape == (5, 4) and s["positions"].shape == (5, 4, 2)
        assert torch.equal(s["frames"], ref["frames"][lo : lo + 5])  # decord window == full decode slice
        assert torch.equal(s["actions"], ref["actions"][lo : lo + 5])
        assert torch.equal(s["positions"], ref["positions"][lo : lo + 5])
    assert len({s["start"] for s in windowed}) > 1
    assert [s["start"] for s in windowed] == [
        s["start"] for s in ClipDataset(ds_dir, "train", window=5, seed=7)
    ]
    pyav = list(itertools.islice(ClipDataset(ds_dir, "train", window=5, seed=7, backend="pyav"), 3))
    assert all(torch.equal(a["frames"], b["frames"]) for a, b in zip(pyav, windowed, strict=False))
    with pytest.raises(ValueError, match="longer than clip"):
        next(iter(ClipDataset(ds_dir, "train", window=9)))


def test_layouts(data):
    ds_dir, _, _ = data
    thwc = next(iter(ClipDataset(ds_dir, "train")))["frames"]
    tchw = next(iter(ClipDataset(ds_dir, "train", layout="TCHW")))["frames"]
    assert thwc.shape == (8, 128, 128, 3) and tchw.shape == (8, 3, 128, 128)
    assert tchw.is_contiguous() and torch.equal(tchw, thwc.permute(0, 3, 1, 2))
    batch = take(ClipLoader(ClipDataset(ds_dir, "train", layout="TCHW", window=2), 4), 1)[0]
    assert batch["frames"].shape == (4, 2, 3, 128, 128)
    with pytest.raises(ValueError, match="layout"):
        ClipDataset(ds_dir, "train", layout="CTHW")


def test_dataset_arguments_are_checked(data, tmp_path):
    ds_dir, _, _ = data
    with pytest.raises(ValueError, match="give the split"):
        ClipDataset(ds_dir)
    with pytest.raises(ValueError, match="unknown split"):
        ClipDataset(ds_dir, "training")
    with pytest.raises(FileNotFoundError, match="no manifest"):
        ClipDataset(tmp_path, "train")
    with pytest.raises(ValueError, match="empty"):
        ClipDataset([])


# -------------------------------------------------------------------------------------- torchrun

SCRIPT = """
import json, sys
import torch.distributed as dist
from shards.loader import ClipDataset, ClipLoader, gather_states

dist.init_process_group("gloo")
loader = ClipLoader(ClipDataset(sys.argv[1], "train", shuffle=True, seed=5), batch_size=4, num_workers=2)
keys = [k for batch in loader for k in batch["key"]]
states = gather_states(loader.state_dict())
everyone = [None] * dist.get_world_size()
dist.all_gather_object(everyone, keys)
if dist.get_rank() == 0:
    json.dump({"keys": everyone, "ranks": [s["rank"] for s in states]}, open(sys.argv[2], "w"))
dist.destroy_process_group()
"""


@pytest.mark.torchrun
@pytest.mark.timeout(120)
def test_split_under_torchrun(data, tmp_path, python_cmd):
    ds_dir, _, keys = data
    script = tmp_path / "split.py"
    script.write_text(textwrap.dedent(SCRIPT))
    out = tmp_path / "out.json"
    cmd = [*python_cmd, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    subprocess.run(
        [*cmd, str(script), str(ds_dir), str(out)],
        cwd=REPO,
        check=True,
        timeout=110,
        env={**_env(), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    result = json.loads(out.read_text())
    assert result["ranks"] == [0, 1]
    assert all(result["keys"]) and Counter(k for ks in result["keys"] for k in ks) == Counter(keys)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
