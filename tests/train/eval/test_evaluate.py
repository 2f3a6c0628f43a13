"""train/evaluate.py end to end on tiny runs: Table 1 and DCI tables, scores against real pixels, videos
and figures, skipped metrics reported as skipped; plus the table layout itself."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from einops import rearrange

from model.base import TokenWorldModel
from model.config import LAMConfig
from model.flam import FLAM
from shards.config import merge, parse_overrides, to_dict
from tests.helpers import TINY_TOKENIZER, ingest_multigrid, lam_config, precompute_config, save_tokenizer
from train import evaluate, precompute
from train import lam as train_lam
from train.config import load_config
from train.eval.report import SCORES_SCHEMA, table1, table2_dci, write_reports

# FVD on (configs/brief.yaml turns it off for CPU-sized runs): the tests check it runs and is skipped right
EVAL = ["eval.split=train", "eval.num_clips=3", "eval.rollout_steps=8", "eval.batch_clips=2", "eval.videos=2"]
EVAL.append("eval.fvd=true")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A MultiGrid set with 10-frame clips (FVD needs 9), a random tiny tokenizer, its token cache and
    three 2-step runs: FLAM, Genie and the World Model."""
    root = tmp_path_factory.mktemp("evaldata")
    ingest_multigrid(root, episodes=12, episode_len=20, clip_len=10)
    # IMPALA, not the demo's per-cell arch: a random patch tokenizer maps every frame to one code, so Recon
    # would equal Copy and the protocol test could not tell them apart
    ckpt = save_tokenizer(root / "tok", dataclasses.replace(TINY_TOKENIZER, arch="impala", patch_size=0))
    precompute.main(precompute_config(root, ckpt))
    dirs = []
    for model in ("flam", "genie", "world_model"):
        run_dir = root / "runs" / f"{model}-multigrid"
        extra = [f"model={model}", "lam.slot_iters=1", "lam_train.steps=2", "lam_train.ckpt_every=2"]
        train_lam.main(lam_config(root, ckpt, run_dir, *extra))
        dirs.append(run_dir)
    return root, dirs


class ReferenceModel(TokenWorldModel):
    """A "model" that probes the evaluation protocol. Its latent actions are the next frames' features
    (evaluation infers latents from the whole ground-truth window, as the paper's protocol does), so
    ``oracle`` rolls out the ground-truth future codes exactly; ``copy`` repeats the last context frame."""

    latent = "none"

    def __init__(self, cfg: LAMConfig, kind: str) -> None:
        super().__init__(cfg)
        self.kind = kind

    def infer_actions(self, features, actions=None):
        return rearrange(features[:, 1:], "b t n f -> b t 1 (n f)")

    def rollout(self, first, actions, snap=None):
        if self.kind == "copy":
            return first[:, -1:].expand(-1, actions.shape[1], -1, -1)
        return rearrange(actions[:, :, 0], "b t (n f) -> b t n f", f=first.shape[-1])


@pytest.fixture(scope="module")
def evaluated(runs, tmp_path_factory):
    """One evaluation (FVD, ST-LPIPS, DCI, figures) of the three trained runs, loaded from their folders,
    next to three reference models of the protocol: an oracle rolling out the ground-truth codes, a copier
    repeating the last context frame and an untrained FLAM (zero head: it copies) -> (folder, results)."""
    _, dirs = runs
    out = tmp_path_factory.mktemp("eval")
    cpu = torch.device("cpu")
    trained = [evaluate.load_run(d, cpu, [f"eval.out={out}", *EVAL]) for d in dirs]
    evaluate.label_runs(trained)
    cfg = trained[0].cfg
    figures_off = parse_overrides(["eval.control=false", "eval.latent_plot=false"])
    quiet = load_config(None, merge(to_dict(cfg), figures_off))
    models = {
        "Oracle": ReferenceModel(cfg.lam, "oracle"),
        "Copier": ReferenceModel(cfg.lam, "copy"),
        "Untrained FLAM": FLAM(cfg.lam),
    }
    references = [evaluate.Run(out / name, quiet, model.eval(), 0, name) for name, model in models.items()]
    results = {"multigrid": evaluate.evaluate_dataset(trained + references, out, cpu)}
    write_reports(results, out)
    return out, results["multigrid"]


def test_evaluation_writes_tables_videos_and_figures(evaluated):
    out, scores = evaluated
    everything = json.loads((out / "scores.json").read_text())
    assert everything["schema_version"] == SCORES_SCHEMA and len(everything["commit"]) == 40
    assert everything["datasets"]["multigrid"]["rows"] == json.loads(json.dumps(scores["rows"]))
    assert scores["windows"] == 3 and scores["rollout_steps"] == 8
    rows = scores["rows"]
    assert {"FLAM", "Genie", "World Model", "Recon", "Copy"} <= set(rows)
    for row in rows.values():
        assert {"psnr", "ssim", "st_lpips", "fvd"} <= set(row) and len(row["psnr_by_step"]) == 8
        assert "lpips" not in row
    assert "eval.lpips_backbone" in scores["skipped"]["lpips"]
    assert rows["Recon"]["psnr"] > 0 and rows["Copy"]["fvd"] >= 0
    table = (out / "table1.md").read_text()
    assert "| multigrid | PSNR (↑) |" in table and "| FLAM | Genie | World Model |" in table
    assert "LPIPS skipped" in table and "ST-LPIPS (↓)" in table and "FVD (↓)" in table
    # DCI: the slot models on MultiGrid's positions; Genie and the World Model have no slots
    assert set(scores["dci"]) == {"FLAM", "Untrained FLAM", "Random"}
    assert 0 <= scores["dci"]["FLAM"]["informativeness"] <= 1
    assert (out / "table2_dci.md").exists()
    assert (out / scores["video"]).stat().st_size > 0
    figures = scores["figures"]
    assert any(f.endswith("-control.png") for f in figures["FLAM"])  # Fig. 6 for the factored model
    assert any(f.endswith("-latent-actions.png") for f in figures["FLAM"])  # Fig. 5
    assert any(f.endswith("-assignment.png") for f in figures["FLAM"])  # Figs. 7-9
    assert figures["World Model"] == []  # no latent to plot or control
    for files in figures.values():
        assert all((out / f).stat().st_size > 0 for f in files)


def test_protocol_ground_truth_scores_recon_and_copying_scores_copy(evaluated):
    """A rollout of the ground-truth future codes scores exactly the Recon row (so Recon is computed on the
    frames the models predict), and repeating the last context frame scores exactly the Copy row, on every
    metric; an untrained FLAM (zero head: it copies) scores Copy too, so no model sees the future."""
    rows = evaluated[1]["rows"]
    for metric in ("psnr", "ssim", "st_lpips", "psnr_by_step"):
        assert rows["Oracle"][metric] == rows["Recon"][metric], metric
        assert rows["Copier"][metric] == rows["Copy"][metric] == rows["Untrained FLAM"][metric], metric
    # FVD: the rows' I3D logits are bit-identical (checked), but 3 videos give a rank-2 covariance of 400
    # logits, whose matrix square root (scipy sqrtm) differs in the 7th digit between calls on equal inputs
    approx = pytest.approx(rows["Recon"]["fvd"], rel=1e-5)
    assert rows["Oracle"]["fvd"] == approx
    approx = pytest.approx(rows["Copy"]["fvd"], rel=1e-5)
    assert rows["Copier"]["fvd"] == approx and rows["Untrained FLAM"]["fvd"] == approx
    assert rows["Recon"]["psnr"] != rows["Copy"]["psnr"]  # the windows move: the rows differ


def test_short_clips_skip_fvd_with_the_reason(runs, tmp_path):
    _, dirs = runs
    out = evaluate.main(
        dirs[:1],
        [
            *(f"eval.out={tmp_path}", "eval.split=train", "eval.num_clips=2", "eval.rollout_steps=4"),
            *("eval.st_lpips=false", "eval.dci=false", "eval.control=false", "eval.latent_plot=false"),
            "eval.fvd=true",
        ],
    )
    scores = json.loads((out / "scores.json").read_text())["datasets"]["multigrid"]
    assert "I3D needs >= 9" in scores["skipped"]["fvd"]
    assert "fvd" not in scores["rows"]["FLAM"] and "FVD skipped" in (out / "table1.md").read_text()


def test_evaluation_errors_name_the_problem(runs, tmp_path):
    _, dirs = runs
    with pytest.raises(ValueError, match=r"eval\.rollout_steps"):
        evaluate.main(dirs[:1], [f"eval.out={tmp_path}", "eval.split=train", "eval.rollout_steps=40"])
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        evaluate.main([tmp_path], [])
    # The model is the checkpoint's: an override that changes no weight shape must not pass silently.
    with pytest.raises(ValueError, match=r"eval\.\* and data\.root only"):
        evaluate.main(dirs[:1], [f"eval.out={tmp_path}", "lam.coupling=global"])
    with pytest.raises(FileNotFoundError, match=r"eval\.lpips_backbone"):
        evaluate.main(
            dirs[:1],
            [
                f"eval.out={tmp_path}",
                "eval.split=train",
                "eval.rollout_steps=4",
                f"eval.lpips_backbone={tmp_path}/x.pth",
            ],
        )


def test_runs_are_rebuilt_from_their_checkpoint_not_their_config_file(runs, tmp_path):
    """config.yaml is for people to read; the model evaluated is the one the checkpoint holds."""
    _, dirs = runs
    copy = tmp_path / "flam-edited"
    shutil.copytree(dirs[0], copy, symlinks=True)
    config = copy / "config.yaml"
    config.write_text(config.read_text().replace("coupling: factored", "coupling: global"))
    run = evaluate.load_run(copy, torch.device("cpu"), ["eval.num_clips=2"])
    assert run.cfg.lam.coupling == "factored" and run.model.idm.body.spatial_frames == 1
    assert run.cfg.eval.num_clips == 2


def test_overrides_after_the_run_folders_are_overrides(tmp_path):
    """`--runs a b eval.num_clips=8` (the README form): argparse sweeps the override into --runs."""
    odd = tmp_path / "run=2"
    odd.mkdir()
    runs, overrides = evaluate.parse_cli(["--runs", "runs/a", str(odd), "eval.num_clips=8", "eval.videos=1"])
    assert runs == ["runs/a", str(odd)]
    assert overrides == ["eval.num_clips=8", "eval.videos=1"]
    with pytest.raises(SystemExit):
        evaluate.parse_cli(["--runs", "eval.num_clips=8"])


def test_table1_layout_average_and_na():
    rows = lambda psnr: {"psnr": psnr, "ssim": 0.9, "fvd": 10.0}  # noqa: E731
    results = {
        "bigfish": {"rows": {"FLAM": rows(30.0), "World Model": rows(24.0), "Recon": rows(34.0)}},
        "nuplan": {"rows": {"FLAM": rows(20.0), "Recon": rows(22.0)}},
    }
    text = table1(results)
    lines = text.splitlines()
    assert lines[0] == "| Dataset | Metric | FLAM | World Model | Recon |"
    assert lines[2].startswith("| Average | PSNR (↑) | 25.00 | N/A | 28.00 |")  # one value: no "best"
    assert "| bigfish | PSNR (↑) | **30.00** | 24.00 | 34.00 |" in text
    assert "| nuplan | PSNR (↑) | 20.00 | N/A | 22.00 |" in text
    assert "LPIPS" not in text  # skipped everywhere: no row
    tie = table1({"leaper": {"rows": {"FLAM": rows(30.0), "Genie": rows(30.0), "Recon": rows(31.0)}}})
    assert "**" not in tie  # all models tie: nothing is best
    dci = {"FLAM": {"disentanglement": 0.9, "completeness": 0.8, "informativeness": 0.7}}
    dci["Random"] = {"disentanglement": 0.3, "completeness": 0.3, "informativeness": 0.1}
    assert table2_dci(dci).splitlines()[2] == "| D (↑) | 0.90 | 0.30 |"


def test_metrics_are_the_ones_training_validation_uses():
    """One implementation: evaluation, training-time validation and precompute's Recon report score with
    the same Scorer, which calls the pure functions of model/metrics.py."""
    from model import metrics
    from train.eval import scoring

    assert scoring.psnr is metrics.psnr and scoring.ssim is metrics.ssim
    assert evaluate.Scorer is train_lam.Scorer is precompute.Scorer is scoring.Scorer
    assert torch.isinf(metrics.psnr(torch.ones(3, 4, 4), torch.ones(3, 4, 4)))
