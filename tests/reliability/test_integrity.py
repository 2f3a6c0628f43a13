"""Nothing lost silently, corruption detected (docs/reliability.md): damaged, cut, missing and
miscounted shards through precompute, training and evaluation; damaged token-cache parts through
training; reruns that repair once the data is back."""

from __future__ import annotations

import json
import shutil
import tarfile

import numpy as np
import pytest

from shards.integrity import PartialDataError
from shards.tokens import CorruptCacheError, TokenCache
from tests import helpers
from tests.helpers import REPO, copy_dataset, precompute_config, tree_bytes
from train import lam as train_lam
from train import precompute
from train import tokenizer as train_tokenizer
from train.common import load_checkpoint
from train.config import load_config
from train.eval.report import write_reports
from train.eval.windows import read_windows

SHARD = "multigrid-train-000000"


def lam_config(root, tokenizer, run_dir, *extra: str):
    return helpers.lam_config(root, tokenizer, run_dir, "lam_train.steps=2", "lam_train.ckpt_every=2", *extra)


def members(path):
    with tarfile.open(path) as tar:
        return tar.getmembers()


def damage_shard(path, how: str) -> None:
    """Damage a 16-sample shard the ways the review did (its sections 2.1-2.4)."""
    headers = members(path)
    fifth = headers[4 * 4]  # first member of sample 4 (4 members per sample)
    data = bytearray(path.read_bytes())
    if how == "truncated":  # mid-member
        del data[len(data) // 2 :]
    elif how == "cut at a member boundary":  # looks like a clean end of archive
        del data[fifth.offset :]
    elif how == "bad header":  # one bit in a name: the tar reader stops there
        data[fifth.offset + 10] ^= 0x01
    elif how == "flipped mp4 bytes":  # inside sample 0's video: decodes to wrong frames
        mp4 = next(m for m in headers if m.name.endswith(".mp4"))
        for i in range(mp4.offset_data + 200, mp4.offset_data + 600):
            data[i] ^= 0xFF
    if how == "deleted":
        path.unlink()
    else:
        path.write_bytes(bytes(data))


def train_parts(cache_root):
    return tree_bytes(cache_root / "train" / "parts")


@pytest.mark.parametrize(
    "how, verify",
    [
        ("truncated", True),
        ("cut at a member boundary", True),
        ("deleted", True),
        ("flipped mp4 bytes", True),  # only the sha256 catches this one
        ("bad header", False),  # without sha256: the manifest count catches the early end
    ],
)
def test_damaged_shard_gives_an_incomplete_part_refused_by_training_and_redone_when_repaired(
    tiny_data, tiny_tokenizer, tiny_cache, tmp_path, capfd, how, verify
):
    root = copy_dataset(tiny_data, tmp_path / "data")
    shard = root / "multigrid" / "train" / f"{SHARD}.tar"
    damage_shard(shard, how)
    extra = () if verify else ("data.verify_shards=false",)  # sha256 checks are the default
    cfg = precompute_config(root, tiny_tokenizer, "precompute.splits=[train]", *extra)
    cache_root = precompute.main(cfg)

    cache = TokenCache(cache_root / "train")
    assert set(cache.missing) == {SHARD} and cache.missing[SHARD]["expected"] == 16
    assert cache.missing[SHARD]["got"] < 16 and cache.missing[SHARD]["problem"]
    index = json.loads((cache_root / "train" / "index.json").read_text())
    assert [p["complete"] for p in index["parts"]] == [False, True]
    err = capfd.readouterr().err
    assert f"{SHARD}: {cache.missing[SHARD]['got']}/16" in err  # the summary names the shard
    with pytest.raises(PartialDataError, match=rf"(?s){SHARD}.*lam_train.allow_partial=true"):
        train_lam.main(lam_config(root, tiny_tokenizer, tmp_path / "run"))

    shutil.copyfile(tiny_data / "multigrid" / "train" / f"{SHARD}.tar", shard)  # repaired (as ingest would)
    precompute.main(cfg)
    assert not TokenCache(cache_root / "train").missing
    assert train_parts(cache_root) == train_parts(tiny_cache)


def test_manifest_count_below_the_real_one_is_an_incomplete_part_not_a_crash(
    tiny_data, tiny_tokenizer, tmp_path
):
    root = copy_dataset(tiny_data, tmp_path / "data")
    manifest_path = root / "multigrid" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    next(s for s in manifest["shards"] if SHARD in s["path"])["num_samples"] = 5
    manifest_path.write_text(json.dumps(manifest))
    cache_root = precompute.main(precompute_config(root, tiny_tokenizer, "precompute.splits=[train]"))
    missing = TokenCache(cache_root / "train").missing
    assert set(missing) == {SHARD} and "more clips than its manifest" in missing[SHARD]["problem"]


def test_allow_partial_trains_without_the_missing_part_and_records_it(tiny_data, tiny_tokenizer, tmp_path):
    root = copy_dataset(tiny_data, tmp_path / "data")
    damage_shard(root / "multigrid" / "train" / f"{SHARD}.tar", "deleted")
    precompute.main(precompute_config(root, tiny_tokenizer, "precompute.splits=[train]"))
    run = tmp_path / "run"
    train_lam.main(lam_config(root, tiny_tokenizer, run, "lam_train.allow_partial=true"))
    recorded = json.loads((run / "missing_data.json").read_text())
    assert recorded[SHARD]["got"] == 0 and recorded[SHARD]["expected"] == 16
    assert load_checkpoint(run / "ckpt" / "latest")["data"]["missing"] == recorded


def test_tokenizer_training_refuses_missing_train_shards(tiny_data, tmp_path):
    root = copy_dataset(tiny_data, tmp_path / "data")
    damage_shard(root / "multigrid" / "train" / f"{SHARD}.tar", "truncated")
    cfg = load_config(
        REPO / "configs/demo.yaml",
        [f"data.root={root}", f"tokenizer_train.run_dir={tmp_path}/t", "tokenizer_train.steps=1"],
    )
    with pytest.raises(PartialDataError, match=rf"(?s){SHARD}.*tokenizer_train.allow_partial=true"):
        train_tokenizer.main(cfg)


# ------------------------------------------------------------------------------- cache parts (F9)


def damage_part(part, how: str) -> None:
    codes = part / "codes.npy"
    if how == "codes.npy deleted":
        codes.unlink()
    elif how == "codes.npy truncated":
        codes.write_bytes(codes.read_bytes()[: codes.stat().st_size // 2])
    elif how == "codes.npy randomised":  # same size, valid header: only the checksum tells
        data = bytearray(codes.read_bytes())
        data[-4096:] = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
        codes.write_bytes(bytes(data))
    elif how == "part deleted":
        shutil.rmtree(part)


@pytest.mark.parametrize(
    "how", ["codes.npy deleted", "codes.npy truncated", "codes.npy randomised", "part deleted"]
)
def test_damaged_cache_part_is_refused_by_training_and_repaired_by_precompute(
    tiny_data, tiny_tokenizer, tiny_cache, tmp_path, how
):
    root = tmp_path / "data"
    shutil.copytree(tiny_data / "multigrid", root / "multigrid")  # with its token cache
    cache_root = root / "multigrid" / "tokens" / tiny_cache.name
    damage_part(cache_root / "train" / "parts" / SHARD, how)
    with pytest.raises(CorruptCacheError, match=rf"(?s){SHARD}.*make precompute"):
        train_lam.main(lam_config(root, tiny_tokenizer, tmp_path / "run"))
    precompute.main(precompute_config(root, tiny_tokenizer, "precompute.splits=[train]"))
    assert train_parts(cache_root) == train_parts(tiny_cache)


def test_garbage_index_names_the_file_and_a_rerun_rewrites_it(
    tiny_data, tiny_tokenizer, tiny_cache, tmp_path
):
    root = tmp_path / "data"
    shutil.copytree(tiny_data / "multigrid", root / "multigrid")
    index = root / "multigrid" / "tokens" / tiny_cache.name / "train" / "index.json"
    index.write_text("garbage")
    with pytest.raises(ValueError, match=rf"{index}.*make precompute"):
        TokenCache(index.parent)
    precompute.main(precompute_config(root, tiny_tokenizer, "precompute.splits=[train]"))
    assert index.read_bytes() == (tiny_cache / "train" / "index.json").read_bytes()


# -------------------------------------------------------------------------------- evaluation (F14)


def test_evaluation_refuses_a_split_with_a_missing_shard_unless_allowed(tiny_data, tmp_path):
    root = copy_dataset(tiny_data, tmp_path / "data")
    gone = "multigrid-test-000001"
    (root / "multigrid" / "test" / f"{gone}.tar").unlink()
    args = [f"data.root={root}", "eval.num_clips=0", "eval.context_frames=1", "eval.rollout_steps=3"]
    with pytest.raises(PartialDataError, match=rf"(?s){gone}.*eval.allow_partial=true"):
        read_windows(load_config(REPO / "configs/demo.yaml", args), 4)
    data = read_windows(load_config(REPO / "configs/demo.yaml", [*args, "eval.allow_partial=true"]), 4)
    assert set(data["missing"]) == {gone} and data["missing"][gone]["got"] == 0
    assert len(data["frames"]) == 2 * 2  # the other test shard's 2 clips of 8 frames, 2 windows each


def test_missing_data_is_written_into_the_evaluation_report(tmp_path):
    result = {
        "split": "test",
        "windows": 4,
        "context_frames": 1,
        "rollout_steps": 3,
        "rows": {"Copy": {"psnr": 10.0, "ssim": 0.5}, "Recon": {"psnr": 20.0, "ssim": 0.9}},
        "skipped": {},
        "dci": {},
        "video": "v.gif",
        "missing": {"multigrid-test-000001": {"expected": 2, "got": 0, "problem": "missing"}},
    }
    write_reports({"multigrid": result}, tmp_path)
    assert (
        json.loads((tmp_path / "scores.json").read_text())["datasets"]["multigrid"]["missing"]
        == result["missing"]
    )
    table = (tmp_path / "table1.md").read_text()
    assert "Missing data" in table and "multigrid-test-000001 gave 0/2" in table
    assert "FVD from" not in table  # no FVD was computed: no note about it (F16)
