"""Precompute: the cache equals tokenizer.encode of the decoded clips, aligned ground truth, Recon
report, idempotent reruns and stale caches refused (kills: tests/reliability/test_faults.py)."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch

from shards.format import npy_load
from shards.manifest import load_manifest
from shards.tokens import StaleCacheError, TokenCache, file_id, manifest_sha256
from shards.video import decode_video
from tests.helpers import REPO, TINY_TOKENIZER, copy_dataset, save_tokenizer
from train import precompute
from train.common import load_tokenizer
from train.config import load_config


def config(root, tokenizer, workers: int = 0):
    return load_config(
        REPO / "configs/demo.yaml",
        {
            "data": {"root": str(root), "num_workers": workers, "tokenizer": str(tokenizer)},
            "precompute": {"batch_clips": 4, "report_clips": 8},
        },
    )


@pytest.fixture(scope="module")
def cached(tiny_data, tiny_tokenizer, tmp_path_factory):
    """The session's shards (copied: their own cache is made here, with a DataLoader worker) and tokenizer."""
    root = copy_dataset(tiny_data, tmp_path_factory.mktemp("pre"))
    out = precompute.main(config(root, tiny_tokenizer, workers=1))
    return root, root / "multigrid", tiny_tokenizer, out


def clips_in_shards(ds):
    clips = {}
    for shard in load_manifest(ds)["shards"]:
        with tarfile.open(ds / shard["path"]) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            if name.endswith(".mp4"):
                key = name[:-4]
                clips[key] = (shard["split"], decode_video(data), npy_load(members[f"{key}.actions.npy"]))
    return clips


def test_cache_equals_encode_of_decoded_clips(cached):
    root, ds, ckpt, out = cached
    tokenizer, tok_id = load_tokenizer(ckpt, torch.device("cpu"))
    assert out == root / "multigrid" / "tokens" / tok_id and tok_id == file_id(ckpt)
    truth = clips_in_shards(ds)
    seen = 0
    for split in ("train", "val", "test"):
        cache = TokenCache(out / split)
        cache.check(tok_id, manifest_sha256(ds))
        assert cache.info.grid == (8, 8) and cache.info.levels == TINY_TOKENIZER.levels
        assert len(cache) == load_manifest(ds)["splits"][split]["clips"]
        for i, key in enumerate(cache.keys()):
            s, frames, actions = truth[key]
            assert s == split
            item = cache.clip(i)
            expected = tokenizer.encode(torch.from_numpy(frames)[None])[0].numpy()
            np.testing.assert_array_equal(item["codes"], expected.astype(np.uint16))
            np.testing.assert_array_equal(item["actions"], actions)
            assert item["positions"].shape == (8, 4, 2)
            seen += 1
    assert seen == len(truth)
    report = json.loads((out / "recon.json").read_text())
    assert set(report) == {"val", "test"} and all(0 < r["psnr"] < 100 for r in report.values())


def test_rerun_rewrites_nothing(cached):
    root, _, ckpt, out = cached
    parts = sorted((out / "train" / "parts").rglob("*.npy"))
    stamps = [p.stat().st_mtime_ns for p in parts]
    precompute.main(config(root, ckpt))
    assert [p.stat().st_mtime_ns for p in parts] == stamps


def test_stale_cache_and_changed_shards_are_refused(cached):
    root, ds, ckpt, out = cached
    other = save_tokenizer(root / "tok2", seed=1)
    cache = TokenCache(out / "train")
    with pytest.raises(StaleCacheError, match="made by tokenizer"):
        cache.check(file_id(other), manifest_sha256(ds))
    with pytest.raises(StaleCacheError, match="re-ingested"):
        cache.check(file_id(ckpt), "0" * 64)
