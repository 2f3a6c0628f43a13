"""Shard writer: complete tars under final names only, deterministic bytes, honest checksums."""

import tarfile

import pytest

from shards.writer import ShardWriter, sha256_file


def write(path, samples):
    with ShardWriter(path) as w:
        for key, members in samples:
            w.write(key, members)
    return w.result


SAMPLES = [(f"ds-{i:08d}-0000", {"mp4": bytes([i]) * 100, "json": b"{}"}) for i in range(3)]


def test_tar_contents_order_and_checksum(tmp_path):
    result = write(tmp_path / "a.tar", SAMPLES)
    assert result.num_samples == 3 and result.sha256 == sha256_file(tmp_path / "a.tar")
    assert result.size_bytes == (tmp_path / "a.tar").stat().st_size
    with tarfile.open(tmp_path / "a.tar") as tar:
        names = tar.getnames()
        assert names == [f"ds-{i:08d}-0000.{ext}" for i in range(3) for ext in ("mp4", "json")]
        assert tar.extractfile(names[2]).read() == bytes([1]) * 100
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())
    assert list(tmp_path.iterdir()) == [tmp_path / "a.tar"]  # no temporary left behind


def test_same_samples_same_bytes(tmp_path):
    assert write(tmp_path / "a.tar", SAMPLES).sha256 == write(tmp_path / "b.tar", SAMPLES).sha256


def test_failure_leaves_no_file_under_the_final_name(tmp_path):
    with pytest.raises(RuntimeError), ShardWriter(tmp_path / "a.tar") as w:
        w.write("k", {"json": b"{}"})
        raise RuntimeError("render crashed")
    assert list(tmp_path.iterdir()) == []


def test_bad_keys_are_refused(tmp_path):
    with ShardWriter(tmp_path / "a.tar") as w:
        with pytest.raises(ValueError, match="must not contain"):
            w.write("a.b", {"json": b"{}"})
        w.write("a", {"json": b"{}"})
        with pytest.raises(ValueError, match="duplicate"):
            w.write("a", {"json": b"{}"})
