"""Capacity sweeps (train/sweep.py): one run per family and value with the family's knob set, scored by the
one-step IDM error, the Table 1 rollouts, DCI and the transfer tests, written as a table and a plot."""

from __future__ import annotations

import json

import pytest

from model.latents import FAMILIES
from shards.config import merge, to_dict
from train import lam as train_lam
from train import plan, sweep
from train.config import load_config

pytestmark = pytest.mark.usefixtures("seeded_one_thread")


def test_a_sweep_trains_one_run_per_family_value_and_writes_table_and_plot(small_world, tmp_path):
    ckpt, runs = small_world
    world = ckpt.parents[2]  # the small world's root: tok/, multigrid/, runs/
    base = to_dict(plan.run_config(runs["flam"]))
    base = load_config(None, merge(base, {"sweep": {"kl": [1e-3, 1e-5], "sparse": [0.1], "vq": [8]}}))
    cfgs = sweep.run_configs(base, list(FAMILIES), "flam", world, tmp_path)
    assert [c.lam_run_dir.name for c in cfgs] == ["kl-0.001", "kl-1e-05", "sparse-0.1", "vq-8"]
    assert [(c.lam.latent, c.lam.beta, c.lam.l1, c.lam.vq_codes) for c in cfgs][1:] == [
        ("kl", 1e-5, base.lam.l1, base.lam.vq_codes),
        ("sparse", base.lam.beta, 0.1, base.lam.vq_codes),
        ("vq", base.lam.beta, base.lam.l1, 8),
    ]
    assert all(c.tokenizer_checkpoint == ckpt for c in cfgs)
    for c in cfgs[1:]:
        train_lam.main(c)
    extra = ["eval.rollout_steps=3", "eval.num_clips=4", "eval.transfer_windows=4", "eval.transfer_frames=4"]
    scores = sweep.score_runs(cfgs[1:], base, tmp_path, [*sweep.EVAL_ARGS, *extra])
    out = sweep.write_reports({**scores, "seconds": 0}, tmp_path)
    saved = json.loads((out / "scores.json").read_text())
    assert [r["family"] for r in saved["rows"]] == ["kl", "sparse", "vq"]
    for r in saved["rows"]:
        assert r["idm_mse"] >= 0 and r["rollout_psnr"] > 0 and "dci" in r and "cycle_ratio" in r
    text = (out / "sweep.md").read_text()
    assert "| sparse | lambda_l1 | 0.1 |" in text and "| vq | codebook | 8 |" in text
    assert (out / "sweep.png").exists() and (out / "eval" / "transfer.md").exists()
    with pytest.raises(ValueError, match="no latent actions to sweep"):
        sweep.main("configs/demo.yaml", [], model="world_model")
