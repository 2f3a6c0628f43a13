"""Shards read unchanged by other tools: plain tarfile + PyAV, the webdataset library, Ray Data."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from ingest.config import RunOptions, build_config
from ingest.pipeline import run_ingest

CFG = {"episodes": 10, "clip_len": 8, "episodes_per_shard": 10, "source": {"episode_len": 16}}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("interop")
    manifest = run_ingest(
        build_config("multigrid", CFG), RunOptions(out=str(out), executor="local", progress=False)
    )
    return out / "multigrid", manifest


def test_independent_reader_decodes_documented_shapes(shards):
    """No project code: tarfile for the container, PyAV for the video, numpy for the arrays."""
    import av

    ds, manifest = shards
    seen = 0
    for shard in manifest["shards"]:
        with tarfile.open(ds / shard["path"]) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            if not name.endswith(".mp4"):
                continue
            key = name[: -len(".mp4")]
            with av.open(io.BytesIO(data)) as container:
                frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
            actions = np.load(io.BytesIO(members[key + ".actions.npy"]))
            positions = np.load(io.BytesIO(members[key + ".positions.npy"]))
            meta = json.loads(members[key + ".json"])
            assert frames.shape == (8, 128, 128, 3) and frames.dtype == np.uint8
            assert actions.shape == (8, 4) and positions.shape == (8, 4, 2)
            assert meta["num_frames"] == 8 and meta["split"] == shard["split"]
            seen += 1
    assert seen == manifest["totals"]["clips"]


def test_webdataset_library_reads_the_shards(shards):
    import webdataset as wds

    ds, manifest = shards
    urls = [str(ds / s["path"]) for s in manifest["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode())
    assert len(samples) == manifest["totals"]["clips"]
    sample = samples[0]
    assert {"__key__", "mp4", "actions.npy", "positions.npy", "json"} <= set(sample)
    assert sample["actions.npy"].shape == (8, 4) and sample["json"]["dataset"] == "multigrid"


@pytest.mark.ray
def test_ray_data_reads_the_shards(shards, ray_session):
    import ray.data

    ds, manifest = shards
    paths = [str(ds / s["path"]) for s in manifest["shards"]]
    rows = ray.data.read_webdataset(paths).take_all()
    assert len(rows) == manifest["totals"]["clips"]
    assert {r["__key__"] for r in rows} == {f"multigrid-{e:08d}-{c:04d}" for e in range(10) for c in range(2)}


@pytest.mark.ray
def test_ray_pipeline_matches_the_local_executor_byte_for_byte(shards, ray_session, tmp_path):
    _, local = shards
    manifest = run_ingest(
        build_config("multigrid", CFG), RunOptions(out=str(tmp_path), workers=2, progress=False)
    )
    assert manifest == local
