"""Bad input gets a clear error, not a crash (docs/reliability.md): crafted samples are counted skips, a
decompression bomb is refused before it allocates, every training number is range-checked, and every
JSON/YAML file that cannot be read is named with the fix."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ingest.__main__ import main as ingest_main
from ingest.config import build_config
from shards.config import ConfigError
from shards.decode import decode_samples
from shards.files import DataFileError
from shards.loader import ClipDataset
from shards.manifest import load_manifest
from shards.tar import ShardInfo, read_samples
from shards.tokens import TokenCache
from shards.video import encode_frames
from shards.writer import ShardWriter
from tests.helpers import REPO, copy_dataset, ingest_multigrid, multigrid_ingest, precompute_config
from train import precompute
from train.config import load_config

SHARD = "multigrid-train-000000"


def first_samples(tiny_data, n: int = 2):
    path = tiny_data / "multigrid" / "train" / f"{SHARD}.tar"
    return [s for s, _ in zip(read_samples([ShardInfo(str(path))]), range(n), strict=False)]


def with_meta(raw, **changes):
    meta = json.loads(raw.members["json"])
    raw.members["json"] = json.dumps({**meta, **changes}).encode()
    return raw


# ---------------------------------------------------------------------------- crafted samples (F11)

CRAFTED = {
    "deep JSON": lambda raw: setattr(raw, "members", {**raw.members, "json": b"[" * 200_000}),
    "episode 'abc'": lambda raw: with_meta(raw, episode="abc"),
    "num_frames '16'": lambda raw: with_meta(raw, num_frames="16"),
    "info a list": lambda raw: with_meta(raw, info=[1]),
    "absurd size": lambda raw: with_meta(raw, num_frames=1000, height=4096, width=4096),
    "unknown codec ext": lambda raw: with_meta(raw, video_ext="exe"),
}


@pytest.mark.parametrize("craft", CRAFTED)
def test_crafted_meta_is_a_counted_skip(tiny_data, craft):
    bad, good = first_samples(tiny_data)
    CRAFTED[craft](bad)
    stats = ClipDataset([tiny_data / "multigrid" / "train" / f"{SHARD}.tar"])._stats
    out = list(decode_samples([bad, good], stats=stats))
    assert [s["key"] for s in out] == [good.key]
    assert stats.as_dict()["skipped"] == 1


def test_precompute_survives_a_crafted_sample_and_reports_the_part_short(tiny_data, tiny_tokenizer, tmp_path):
    root = copy_dataset(tiny_data, tmp_path / "data")
    shard = root / "multigrid" / "train" / f"{SHARD}.tar"
    samples = list(read_samples([ShardInfo(str(shard))]))
    with_meta(samples[3], episode="abc")
    with ShardWriter(shard) as writer:
        for raw in samples:
            writer.write(raw.key, raw.members)
    # with sha256 checks the whole shard is refused (damaged); without, the one sample is a counted skip
    cfg = precompute_config(root, tiny_tokenizer, "precompute.splits=[train]", "data.verify_shards=false")
    cache = TokenCache(precompute.main(cfg) / "train")
    assert cache.missing[SHARD]["got"] == 15 and cache.missing[SHARD]["expected"] == 16


# --------------------------------------------------------------------------- decompression bomb (F10)

MEASURE = """import resource, sys
from shards.loader import ClipDataset
window = None if sys.argv[2] == "none" else int(sys.argv[2])
ds = ClipDataset([sys.argv[1]], window=window, backend=sys.argv[3])
n = len(list(ds))
print(n, ds.stats["skipped"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


@pytest.fixture(scope="module")
def bomb_and_good(tiny_data, tmp_path_factory):
    """Two one-sample shards: a real clip of tiny_data (8 frames of 64x64), and the same sample whose video
    is a ~13 KB mp4 of 200 black 1024x1024 frames (630 MB decoded) under the same meta."""
    (good,) = first_samples(tiny_data, 1)
    folder = tmp_path_factory.mktemp("bomb")
    paths = {}
    for name, video in (("good", good.members["mp4"]), ("bomb", None)):
        if video is None:
            video = encode_frames(np.zeros((200, 1024, 1024, 3), np.uint8), codec="libx264")
            assert len(video) < 20_000
        paths[name] = folder / f"{name}.tar"
        with ShardWriter(paths[name]) as writer:
            writer.write(good.key, {**good.members, "mp4": video})
    return paths


def peak_mb(path, window: str, backend: str) -> tuple[int, int, int]:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), window, backend],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    samples, skipped, mb = (int(v) for v in out.stdout.split())
    return samples, skipped, mb


@pytest.mark.parametrize("window, backend", [("none", "auto"), ("none", "pyav"), ("4", "auto")])
def test_decompression_bomb_is_skipped_before_it_allocates(bomb_and_good, window, backend):
    good = peak_mb(bomb_and_good["good"], window, backend)
    bomb = peak_mb(bomb_and_good["bomb"], window, backend)
    assert good[:2] == (1, 0) and bomb[:2] == (0, 1)
    assert bomb[2] < good[2] + 150, f"peak RSS {bomb[2]} MB decoding the bomb vs {good[2]} MB for a real clip"


# ------------------------------------------------------------------------------ config numbers (F12)

BAD_NUMBERS = [
    "lam_train.batch_size=0",
    "lam_train.batch_size=-4",
    "lam_train.window=0",
    "lam_train.window_stride=0",
    "lam_train.window_stride=-2",
    "lam_train.ckpt_every=0",
    "lam_train.log_every=0",
    "lam_train.val_every=0",
    "lam_train.steps=-5",
    "lam_train.lr=-1",
    "lam_train.betas=[0.9]",
    "lam_train.grad_clip=0",
    "tokenizer_train.batch_size=0",
    "tokenizer_train.frames_per_clip=0",
    "tokenizer_train.image_every=0",
    "tokenizer_train.weight_decay=-0.1",
    "precompute.batch_clips=0",
    "precompute.report_clips=-1",
    "precompute.splits=[trian]",
    "eval.num_clips=-1",
    "eval.rollout_steps=0",
    "eval.context_frames=0",
    "eval.split=tset",
    "data.num_workers=-1",
    "data.dataset=../../etc",
]


@pytest.mark.parametrize("override", BAD_NUMBERS)
def test_out_of_range_numbers_are_refused_naming_the_key(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"'{key}'"):
        load_config(REPO / "configs/demo.yaml", [override])


# -------------------------------------------------------------------------- YAML and JSON files (F13)

YAML = {
    "unclosed": "lam_train:\n  betas: [0.9, 0.99\n",
    "a list": "- lam_train\n- data\n",
    "a repeated key": "lam_train:\n  steps: 10\n  steps: 20\n",
}


@pytest.mark.parametrize("kind", YAML)
def test_bad_yaml_names_the_file(tmp_path, kind):
    path = tmp_path / "bad.yaml"
    path.write_text(YAML[kind])
    with pytest.raises(ConfigError, match=str(path)):
        load_config(path)


def test_bad_override_value_names_the_override():
    with pytest.raises(ConfigError, match=r"override 'lam_train.betas=\[0.9'"):
        load_config(REPO / "configs/demo.yaml", ["lam_train.betas=[0.9"])


def test_garbage_manifest_names_the_file_everywhere(tiny_data, tiny_tokenizer, tmp_path):
    root = copy_dataset(tiny_data, tmp_path / "data")
    manifest = root / "multigrid" / "manifest.json"
    manifest.write_text('{"format_version": garbage')
    for call in (
        lambda: load_manifest(root / "multigrid"),
        lambda: ClipDataset(root / "multigrid", "train"),
        lambda: precompute.main(precompute_config(root, tiny_tokenizer)),
    ):
        with pytest.raises(DataFileError, match=rf"{manifest} is unreadable.*make ingest"):
            call()


@pytest.fixture
def small_ingest(tmp_path):
    ingest_multigrid(tmp_path, episodes=4)
    return tmp_path, tmp_path / "multigrid"


def ingest_cli(out, *extra):
    """``python -m ingest`` with the settings of ``small_ingest`` (as key=value, JSON values are YAML)."""
    settings = multigrid_ingest(episodes=4)
    overrides = [f"source.{k}={json.dumps(v)}" for k, v in settings.pop("source").items()]
    overrides += [f"{k}={json.dumps(v)}" for k, v in settings.items()]
    args = ["multigrid", "--out", str(out), "--executor", "local", "--no-progress", *extra]
    return ingest_main([*args, *overrides])


def test_unreadable_progress_record_makes_ingest_redo_its_block(small_ingest):
    out, ds = small_ingest
    manifest = (ds / "manifest.json").read_bytes()
    record = ds / ".progress" / "block-000000.json"
    record.write_text(record.read_text()[:40])
    assert ingest_cli(out) == 0
    assert (ds / "manifest.json").read_bytes() == manifest


def test_unreadable_ingest_config_is_named_and_overwrite_recovers(small_ingest, capsys):
    out, ds = small_ingest
    (ds / "ingest_config.json").write_text("not json")
    assert ingest_cli(out) == 2
    assert f"{ds / 'ingest_config.json'} is unreadable" in capsys.readouterr().err
    assert ingest_cli(out, "--overwrite") == 0


# --------------------------------------------------------------------- ingest resume checks sha (F4)


@pytest.mark.parametrize("verify", [True, False])
def test_ingest_rerun_redoes_a_shard_with_flipped_bytes(tiny_data, tmp_path, verify):
    from ingest.config import RunOptions
    from ingest.pipeline import run_ingest

    root = copy_dataset(tiny_data, tmp_path / "data")
    shard = root / "multigrid" / "train" / f"{SHARD}.tar"
    original = shard.read_bytes()
    flipped = bytearray(original)
    flipped[3000:3100] = bytes(b ^ 0xFF for b in flipped[3000:3100])
    shard.write_bytes(bytes(flipped))
    cfg = build_config("multigrid", multigrid_ingest())  # the settings tiny_data was made with
    run_ingest(cfg, RunOptions(out=str(root), executor="local", progress=False, verify=verify))
    assert (shard.read_bytes() == original) is verify  # --no-verify: size only, the damage stays


# ------------------------------------------------------------------------------------ drift (F16)


def test_source_key_errors_name_the_source_section():
    with pytest.raises(ConfigError, match=r"valid keys at source\."):
        build_config("multigrid", {"source": {"num_agent": 8}})


def test_make_passes_the_tokenizer_only_when_given():
    def dry(*args):
        return subprocess.run(
            ["make", "-n", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout

    assert "data.tokenizer" not in dry("precompute", "CONFIG=configs/demo.yaml")  # the config's own
    assert "data.tokenizer=t.pt" in dry("precompute", "TOKENIZER=t.pt")
    assert "data.tokenizer=t.pt" in dry("train", "TOKENIZER=t.pt")
