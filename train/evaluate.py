"""Evaluate trained world models against the ground truth: the paper's Table 1 (and Table 2, Fig. 5, Fig. 6).

    python -m train.evaluate --runs runs/flam-bigfish runs/genie-bigfish runs/adaworld-bigfish
    python -m train.evaluate --runs runs/*-multigrid eval.num_clips=256 eval.lpips_backbone=alexnet.pth

Every run folder (written by ``train/lam.py``) holds its config and checkpoints; runs are grouped by
dataset, and each group shares one frozen tokenizer. For each group, windows of ``context_frames +
rollout_steps`` frames are read from the ``eval.split`` shards (real pixels, decoded from the videos) and
tokenized. Each model infers its latent actions from the whole ground-truth window (the World Model reads
the recorded actions), rolls out ``rollout_steps`` frames autoregressively from the context (every
prediction snapped onto the FSQ grid and fed back), the frozen decoder renders them, and they are scored
against the real frames (section 5.1):

- PSNR, SSIM, LPIPS (only with a backbone file: ``eval.lpips_backbone``), ST-LPIPS and FVD
  (``train/eval/scoring.py``; compare FVDs only at equal ``num_clips``);
- Recon: the tokenizer's own reconstruction of the same future frames (the ceiling), and Copy: the
  tokenizer's reconstruction of the last context frame held still (the floor, in scores.json). Both live in
  the decoder's output space, as every model's rollout does: a model that predicts the ground-truth future
  codes scores exactly Recon, one that repeats the last context frame scores exactly Copy;
- DCI (Table 2) of every slot model's slots against agent positions, with the Random reference, where
  the clips hold positions (MultiGrid, ``train/eval/slots.py``);
- leakage and transfer of latent actions (scene cut, cycle consistency; ``train/eval/transfer.py``) on the
  split's cached tokens: ``transfer.md``;
- videos/: ground truth | Recon | every model, side by side; figures/: controllable generation (one slot's
  latent actions replaced by prior samples or ``eval.control_vector``, Fig. 6) and latent actions in 2D
  coloured by the ground-truth action (Fig. 5).

A metric that cannot run (missing weights, clips too short) is reported as skipped with the reason, never
as a number. Writes ``<out>/scores.json``, ``table1.md`` (+ ``table2_dci.md``), ``videos/``, ``figures/``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from model.latents import FAMILIES
from model.tokenizer import to_float
from shards.config import merge, parse_overrides, split_overrides
from train.common import load_tokenizer, load_world_model
from train.config import Config, load_config
from train.eval.figures import assignment_figure, figures_for
from train.eval.report import DISPLAY, write_reports
from train.eval.rollout import chunks, encode_windows
from train.eval.scoring import Scorer, score_rollouts
from train.eval.slots import random_dci, slot_assignment, slot_dci
from train.eval.transfer import transfer_scores, write_transfer_report
from train.eval.windows import read_windows
from train.visuals import video_grid, write_gif


@dataclass
class Run:
    path: Path
    cfg: Config
    model: torch.nn.Module
    step: int
    label: str = ""


# What evaluation overrides may change: how to evaluate, and where the shards live. Never the model.
EVAL_OVERRIDABLE = ("eval.", "data.root=")


def load_run(path: Path, device: torch.device, overrides: list[str]) -> Run:
    """A trained run: the model and config stored in its ``latest`` checkpoint, with command-line overrides
    of ``eval.*`` (and ``data.root``) only; anything else is refused, since it would not change the weights
    and would silently score a model other than the one trained."""
    if not (path / "ckpt" / "latest").exists():
        raise FileNotFoundError(f"{path} is not a run folder of train/lam.py (no ckpt/latest)")
    refused = [o for o in overrides if not o.startswith(EVAL_OVERRIDABLE)]
    if refused:
        raise ValueError(
            f"evaluation overrides may set eval.* and data.root only, got {refused}: the model is "
            "rebuilt from its checkpoint; train a new run to evaluate another configuration"
        )
    model, config, step = load_world_model(path / "ckpt" / "latest", device)
    cfg = load_config(None, merge(config, parse_overrides(overrides)))
    return Run(path, cfg, model, step)


def label_runs(runs: list[Run]) -> None:
    """Column labels: the model's display name, or the run folder's name where a model appears twice."""
    by_dataset_model: dict[tuple[str, str], int] = {}
    for r in runs:
        key = (r.cfg.data.dataset, r.cfg.model)
        by_dataset_model[key] = by_dataset_model.get(key, 0) + 1
    for r in runs:
        unique = by_dataset_model[(r.cfg.data.dataset, r.cfg.model)] == 1
        r.label = DISPLAY.get(r.cfg.model, r.cfg.model) if unique else r.path.name


@torch.no_grad()
def evaluate_dataset(runs: list[Run], out_dir: Path, device: torch.device) -> dict:
    """Score every run of one dataset on the same windows; write its videos and figures."""
    cfg = runs[0].cfg
    ec, dataset = cfg.eval, cfg.data.dataset
    c, n = ec.context_frames, ec.rollout_steps
    tokenizers = {str(r.cfg.tokenizer_checkpoint) for r in runs}
    if len(tokenizers) > 1:
        raise ValueError(
            f"runs of {dataset} use different tokenizers {sorted(tokenizers)}: evaluate them apart"
        )
    tokenizer, tokenizer_id = load_tokenizer(cfg.tokenizer_checkpoint, device)
    data = read_windows(cfg, c + n)
    for run in runs:
        if run.model.needs_actions and "actions" not in data:
            raise ValueError(f"{run.path}: {run.label} needs ground-truth actions; {dataset} has none")
    real = to_float(data["frames"])  # [W, c + n, 3, H, W] in [-1, 1]
    features = encode_windows(tokenizer, data["frames"], ec.batch_clips, device)  # [W, c + n, N, F]
    scorer = Scorer.for_eval(ec, device, c + n)
    models = {run.label: run.model for run in runs}
    shown = {"Ground truth": real[: min(ec.videos, ec.batch_clips)]}  # the first batch is shown
    for sl in tqdm(chunks(len(real), ec.batch_clips), desc=f"{dataset}: rollouts", leave=False):
        actions = data["actions"][sl].to(device) if "actions" in data else None
        rows = score_rollouts(scorer, tokenizer, features[sl].to(device), c, models, real[sl], actions)
        if sl.start == 0:
            for label in ("Recon", *models):
                pred = rows[label][: ec.videos]
                shown[label] = torch.cat([real[: len(pred), :c], pred], 1)

    gen = torch.Generator().manual_seed(ec.seed)
    grid = tokenizer.cfg.grid_size, tokenizer.cfg.grid_size
    figures: dict[str, list[str]] = {}
    dci: dict[str, dict] = {}
    assignment: dict[str, dict] = {}
    transfer: dict[str, dict] = {}
    for run in runs:
        model, label = run.model, run.label
        figures[label] = figures_for(run, features, data, tokenizer, out_dir, gen)
        if ec.dci and model.has_slots and "positions" in data:
            dci[label] = slot_dci(model, features, data["positions"], ec.batch_clips, ec.seed, device)
        if model.has_slots and "cells" in data:
            stats = slot_assignment(
                model, features, data["positions"], data["cells"], grid, ec.batch_clips, device
            )
            owners = stats.pop("owners")
            path = out_dir / "figures" / f"{dataset}-{run.path.name}-assignment.png"
            assignment_figure(owners[:3], stats["sharing"], f"{label} slot-agent assignment", path)
            assignment[label] = stats
            figures[label].append(str(path.relative_to(out_dir)))
        if ec.transfer and model.latent in FAMILIES:
            transfer[label] = transfer_scores(run, tokenizer_id, tokenizer.cfg.levels, grid, device)
    if dci:
        some = next(r.model for r in runs if r.model.has_slots)
        dci["Random"] = random_dci(some, features, data["positions"], ec.batch_clips, ec.seed, device)

    video = out_dir / "videos" / f"{dataset}-rollouts.gif"
    write_gif(video_grid(list(shown.values()), list(shown)), video)
    rows = scorer.summary()
    rows.pop("real", None)
    return {
        "split": ec.split,
        "windows": len(real),
        "missing": data["missing"],  # shards missing, damaged or short (eval.allow_partial)
        "context_frames": c,
        "rollout_steps": n,
        "tokenizer": str(cfg.tokenizer_checkpoint),
        "tokenizer_id": tokenizer_id,
        "runs": {r.label: {"path": str(r.path), "model": r.cfg.model, "step": r.step} for r in runs},
        "rows": rows,
        "skipped": scorer.skipped,
        "dci": dci,
        "assignment": assignment,
        "transfer": transfer,
        "video": str(video.relative_to(out_dir)),
        "figures": figures,
    }


def main(run_dirs: list[str | Path], overrides: list[str] | None = None) -> Path:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    overrides = list(overrides or [])
    runs = [load_run(Path(p), device, overrides) for p in run_dirs]
    label_runs(runs)
    datasets: dict[str, list[Run]] = {}
    for r in runs:
        datasets.setdefault(r.cfg.data.dataset, []).append(r)
    out_dir = Path(runs[0].cfg.eval.out or "runs/eval-" + "-".join(datasets))
    results = {name: evaluate_dataset(group, out_dir, device) for name, group in datasets.items()}
    write_reports(results, out_dir)
    write_transfer_report(results, out_dir)
    return out_dir


def parse_cli(argv: list[str] | None = None) -> tuple[list[str], list[str]]:
    """Command line -> (run folders, dotted overrides); overrides may follow the run folders."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="run folders written by train/lam.py")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. eval.rollout_steps=8 data.root=/data")
    args = p.parse_args(argv)
    runs, swept = split_overrides(args.runs)
    if not runs:
        p.error("--runs needs at least one run folder")
    return runs, [*swept, *args.overrides]


if __name__ == "__main__":
    main(*parse_cli())
