"""Token cache format: parts + index round trip, windows, stale caches refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shards.tokens import (
    CacheInfo,
    StaleCacheError,
    TokenCache,
    clear_stale_temporaries,
    part_done,
    write_index,
    write_part,
)
from train.batches import TokenWindows

INFO = CacheInfo("multigrid", "train", "tok123", "abc", (4, 4, 4, 4, 4), (2, 2))


def make_cache(tmp_path, lengths=((8, 8), (8,))):
    rng = np.random.default_rng(0)
    clips = {}
    for p, part_lengths in enumerate(lengths):
        codes = [rng.integers(0, 1024, (n, 2, 2)).astype(np.uint16) for n in part_lengths]
        actions = [rng.integers(0, 7, (n, 4)) for n in part_lengths]
        write_part(
            tmp_path,
            f"s{p}",
            codes,
            [f"k{p}-{i}" for i in range(len(codes))],
            episodes=list(range(len(codes))),
            clip_ids=[0] * len(codes),
            actions=actions,
        )
        clips[f"s{p}"] = (codes, actions)
    write_index(tmp_path, INFO, [f"s{p}" for p in range(len(lengths))])
    return clips


def test_parts_round_trip_and_windows(tmp_path):
    clips = make_cache(tmp_path)
    cache = TokenCache(tmp_path)
    assert len(cache) == 3 and cache.num_frames == 24 and cache.info == INFO
    np.testing.assert_array_equal(cache.clip(1)["codes"], clips["s0"][0][1])
    np.testing.assert_array_equal(cache.clip(2, 2, 4)["actions"], clips["s1"][1][0][2:6])
    windows = TokenWindows(cache, window=4, stride=2)
    assert len(windows) == 3 * 3  # starts 0, 2, 4 in each 8-frame clip
    item = windows[4]  # clip 1, start 2
    assert item["codes"].dtype == torch.int64 and item["codes"].shape == (4, 2, 2)
    np.testing.assert_array_equal(item["codes"].numpy(), clips["s0"][0][1][2:6])
    with pytest.raises(IndexError):
        cache.clip(0, 6, 4)
    with pytest.raises(ValueError, match="no window of 9 frames"):
        TokenWindows(cache, window=9)


def test_stale_cache_is_refused(tmp_path):
    make_cache(tmp_path)
    cache = TokenCache(tmp_path)
    cache.check("tok123", "abc")
    with pytest.raises(StaleCacheError, match="made by tokenizer tok123"):
        cache.check("other", "abc")
    with pytest.raises(StaleCacheError, match="re-ingested"):
        cache.check("tok123", "changed")
    with pytest.raises(FileNotFoundError, match="make precompute"):
        TokenCache(tmp_path / "nothing")


def test_part_writes_are_atomic(tmp_path):
    (tmp_path / "parts" / ".s9.abcd.tmp").mkdir(parents=True)  # left by a killed run
    assert not part_done(tmp_path, "s9")
    clear_stale_temporaries(tmp_path)
    assert list((tmp_path / "parts").iterdir()) == []
    write_part(tmp_path, "s9", [np.zeros((2, 2, 2), np.uint16)], ["k"], [0], [0])
    assert part_done(tmp_path, "s9") and sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["s9"]
