"""Evaluate trained world models against the ground truth: the paper's Table 1 (and Table 2, Fig. 5, Fig. 6).

    python train/evaluate.py --runs runs/flam-bigfish runs/genie-bigfish runs/adaworld-bigfish
    python train/evaluate.py --runs runs/*-multigrid eval.num_clips=256 eval.lpips_backbone=alexnet.pth

Every run folder (written by ``train/lam.py``) holds its config and checkpoints; runs are grouped by
dataset, and each group shares one frozen tokenizer. For each group, windows of ``context_frames +
rollout_steps`` frames are read from the ``eval.split`` shards (real pixels, decoded from the videos) and
tokenized. Each model infers its latent actions from the whole ground-truth window (the World Model reads
the recorded actions), rolls out ``rollout_steps`` frames autoregressively from the context (every
prediction snapped onto the FSQ grid and fed back), the frozen decoder renders them, and they are scored
against the real frames (section 5.1):

- PSNR, SSIM (per frame, then averaged; ``model/metrics.py``), LPIPS (standard AlexNet LPIPS, only with a
  backbone file: ``eval.lpips_backbone``), ST-LPIPS (shift-tolerant LPIPS from shipped weights: its own
  scale, never compare it with LPIPS numbers), FVD (Kinetics-400 I3D logits of the context + rollout
  videos against the real videos; needs >= 9 frames per video, and is biased by small video counts:
  compare FVDs only at equal ``num_clips``);
- Recon: the tokenizer's own reconstruction of the same future frames (the ceiling), and Copy: the
  tokenizer's reconstruction of the last context frame held still (the floor, in scores.json). Both live in
  the decoder's output space, as every model's rollout does: a model that predicts the ground-truth future
  codes scores exactly Recon, one that repeats the last context frame scores exactly Copy;
- DCI (Table 2) of every slot model's slots against agent positions, with the Random reference, where
  the clips hold positions (MultiGrid, ``train/dci.py``);
- leakage and transfer of latent actions (scene cut, cycle consistency; ``train/transfer.py``) on the
  split's cached tokens: ``transfer.md``;
- videos/: ground truth | Recon | every model, side by side; figures/: controllable generation (one slot's
  latent actions replaced by prior samples or ``eval.control_vector``, Fig. 6) and latent actions in 2D
  coloured by the ground-truth action (Fig. 5).

A metric that cannot run (missing weights, clips too short) is reported as skipped with the reason, never
as a number. Writes ``<out>/scores.json``, ``table1.md`` (+ ``table2_dci.md``), ``videos/``, ``figures/``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from tqdm import tqdm

from model.fsq import FSQ
from model.latents import FAMILIES
from model.metrics import fvd, psnr, ssim, to_unit
from model.tokenizer import Tokenizer, to_float
from shards.config import merge, parse_overrides, split_overrides
from train import eval_report
from train.assignment import agent_slot_mass, assignment_stats
from train.common import load_tokenizer, load_world_model
from train.config import Config, EvalConfig, load_config
from train.eval_figures import chunks, figures_for
from train.rollouts import decode_features
from train.transfer import transfer_scores, write_transfer_report


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


def read_windows(cfg: Config, length: int) -> dict:
    """Windows of ``length`` frames from the ``eval.split`` shards, in shard order (deterministic):
    frames uint8 [W, L, H, W, 3] and, where recorded, actions [W, L(, M)], positions [W, L, M, 2].
    Shards are checked against the manifest first (size, sha256 unless data.verify_shards=false) and
    counted as read; missing, damaged or short ones are refused unless eval.allow_partial=true, and
    returned under "missing" either way (scores.json records them)."""
    from shards.integrity import check_shards, require_complete, shortfall
    from shards.loader import ClipDataset, list_shards

    ec = cfg.eval
    shards = list_shards(cfg.dataset_dir, ec.split)
    readable, problems = check_shards(shards, verify=cfg.data.verify_shards)
    expected = {Path(s.path).stem: s.num_samples for s in shards}
    got = dict.fromkeys(expected, 0)
    out: dict[str, list] = {"frames": [], "actions": [], "positions": []}
    action_names: list[str] = []
    tile = None
    last = None
    for sample in ClipDataset(readable, rank=0, world_size=1) if readable else []:
        last = Path(sample["shard"]).stem
        got[last] += 1
        action_names = sample["meta"]["info"].get("action_names", action_names)
        tile = sample["meta"]["info"].get("tile_size", tile)  # MultiGrid: pixels per grid cell
        for start in range(0, sample["frames"].shape[0] - length + 1, length):
            for name in out:
                if name in sample:
                    out[name].append(sample[name][start : start + length])
            if ec.num_clips and len(out["frames"]) >= ec.num_clips:
                break
        if ec.num_clips and len(out["frames"]) >= ec.num_clips:
            # reading stopped inside shard `last`: it and the shards after it were not read to the end
            names = [Path(s.path).stem for s in readable]
            got.update({k: expected[k] for k in names[names.index(last) :]})
            break
    missing = shortfall(expected, got, problems)
    where = f"{ec.split} split of {cfg.dataset_dir}"
    require_complete(missing, where, "eval.allow_partial", ec.allow_partial)
    if not out["frames"]:
        raise ValueError(
            f"no window of {length} frames (eval.context_frames + eval.rollout_steps) in the {ec.split} "
            f"clips of {cfg.dataset_dir}: lower eval.rollout_steps or ingest longer clips"
        )
    windows = {k: torch.stack(v) for k, v in out.items() if v and len(v) == len(out["frames"])}
    if tile:  # (W, H) grid cells of the frames, for slot-agent assignments
        windows["cells"] = (windows["frames"].shape[3] // tile, windows["frames"].shape[2] // tile)
    return {**windows, "action_names": list(action_names), "missing": missing}


class Scorer:
    """Per-frame image metrics and FVD's I3D logits, accumulated per row (a model, Recon, Copy).
    Networks whose weights are missing are recorded in ``skipped`` with the reason."""

    def __init__(self, ec: EvalConfig, device: torch.device, video_frames: int) -> None:
        self.device, self.skipped = device, {}
        self.lpips = self.st_lpips = self.i3d = None
        if ec.lpips_backbone:
            from model.lpips import load_lpips

            self.lpips = load_lpips(ec.lpips_backbone, device=device)
        else:
            self.skipped["lpips"] = "no AlexNet backbone given (eval.lpips_backbone=PATH)"
        if ec.st_lpips:
            self.st_lpips = self._optional("st_lpips", lambda: _load_stlpips(device))
        if ec.fvd:
            from model.i3d import MIN_FRAMES

            if video_frames < MIN_FRAMES:
                self.skipped["fvd"] = f"videos of {video_frames} frames; I3D needs >= {MIN_FRAMES}"
            else:
                self.i3d = self._optional("fvd", lambda: _load_i3d(ec.i3d_weights, device))
        self.per_frame: dict[str, dict[str, list[torch.Tensor]]] = {}
        self.logits: dict[str, list[torch.Tensor]] = {}

    def _optional(self, name: str, load):
        try:
            return load()
        except FileNotFoundError as err:  # weights not installed: skip the metric, say why
            self.skipped[name] = str(err)
            return None

    @torch.no_grad()
    def add(self, row: str, pred: torch.Tensor, real: torch.Tensor, context: torch.Tensor) -> None:
        """pred, real: float [B, n, 3, H, W] in [-1, 1]; context: the real context frames [B, c, 3, H, W]."""
        scores = {
            "psnr": psnr(to_unit(pred), to_unit(real)).clamp(max=100),
            "ssim": ssim(to_unit(pred), to_unit(real)),
        }
        for name, net in (("lpips", self.lpips), ("st_lpips", self.st_lpips)):
            if net is not None:
                scores[name] = net(pred.to(self.device), real.to(self.device)).cpu()
        for name, value in scores.items():
            self.per_frame.setdefault(row, {}).setdefault(name, []).append(value.cpu())
        if self.i3d is not None:
            self.logits.setdefault(row, []).append(
                self.i3d(torch.cat([context, pred], 1).to(self.device)).cpu()
            )

    def summary(self, real_row: str = "real") -> dict[str, dict]:
        """-> {row: {metric: mean, "psnr_by_step": [...]}, ...}; FVD of each row against ``real_row``."""
        out: dict[str, dict] = {}
        for row, metrics in self.per_frame.items():
            values = {k: torch.cat(v) for k, v in metrics.items()}  # [W, n]
            out[row] = {k: float(v.mean()) for k, v in values.items()}
            out[row]["psnr_by_step"] = [round(float(x), 3) for x in values["psnr"].mean(0)]
            if self.i3d is not None and row != real_row:
                out[row]["fvd"] = fvd(torch.cat(self.logits[real_row]), torch.cat(self.logits[row]))
        return out


def _load_stlpips(device):
    from model.lpips import load_stlpips

    return load_stlpips("alex", device=device)


def _load_i3d(path: str, device):
    from model.i3d import load_i3d

    return load_i3d(path or None, device=device)


def encode(tokenizer: Tokenizer, fsq: FSQ, frames: torch.Tensor, batch: int, device) -> torch.Tensor:
    """uint8 [W, L, H, W, 3] -> FSQ features [W, L, N, F]."""
    out = []
    for i in range(0, len(frames), batch):
        codes = tokenizer.encode(to_float(frames[i : i + batch]).to(device))
        out.append(fsq.indices_to_codes(codes).flatten(2, 3).cpu())
    return torch.cat(out)


@torch.no_grad()
def evaluate_dataset(runs: list[Run], out_dir: Path, device: torch.device) -> dict:
    """Score every run of one dataset on the same windows; write its videos and figures."""
    cfg = runs[0].cfg
    ec = cfg.eval
    c, n = ec.context_frames, ec.rollout_steps
    if c < 1 or n < 1:
        raise ValueError(f"eval.context_frames ({c}) and eval.rollout_steps ({n}) must be >= 1")
    tokenizers = {str(r.cfg.tokenizer_checkpoint) for r in runs}
    if len(tokenizers) > 1:
        raise ValueError(
            f"runs of {cfg.data.dataset} use different tokenizers {sorted(tokenizers)}: evaluate them apart"
        )
    tokenizer, tokenizer_id = load_tokenizer(cfg.tokenizer_checkpoint, device)
    fsq = FSQ(tokenizer.cfg.levels).to(device)
    data = read_windows(cfg, c + n)
    real = to_float(data["frames"])  # [W, L, 3, H, W] in [-1, 1]
    features = encode(tokenizer, fsq, data["frames"], ec.batch_clips, device)
    grid = tokenizer.cfg.grid_size, tokenizer.cfg.grid_size
    scorer = Scorer(ec, device, c + n)
    shown = {"Ground truth": real[: min(ec.videos, ec.batch_clips)]}  # the first batch is shown
    gen = torch.Generator().manual_seed(ec.seed)

    parts = chunks(len(real), ec.batch_clips)
    for sl in tqdm(parts, desc=f"{cfg.data.dataset}: recon", leave=False):
        f = features[sl].to(device)
        recon = decode_features(tokenizer, f[:, c:], grid).cpu()
        scorer.add("Recon", recon, real[sl, c:], real[sl, :c])
        # Decoded exactly as a model that repeats the last context frame would be.
        copy = decode_features(tokenizer, f[:, c - 1 : c].expand(-1, n, -1, -1), grid).cpu()
        scorer.add("Copy", copy, real[sl, c:], real[sl, :c])
        scorer.add("real", real[sl, c:], real[sl, c:], real[sl, :c])
        if sl.start == 0:
            shown["Recon"] = torch.cat([real[: len(recon[: ec.videos]), :c], recon[: ec.videos]], 1)
    figures: dict[str, list[str]] = {}
    dci: dict[str, dict] = {}
    assignment: dict[str, dict] = {}
    transfer: dict[str, dict] = {}
    for run in runs:
        model = run.model
        if model.needs_actions and "actions" not in data:
            raise ValueError(
                f"{run.path}: {run.label} needs ground-truth actions; {cfg.data.dataset} has none"
            )
        for sl in tqdm(parts, desc=f"{cfg.data.dataset}: {run.label}", leave=False):
            f = features[sl].to(device)
            actions = model.infer_actions(f, data["actions"][sl].to(device) if "actions" in data else None)
            pred_f = model.rollout(f[:, :c], actions[:, c - 1 :], snap=fsq.snap)
            pred = decode_features(tokenizer, pred_f, grid).cpu()
            scorer.add(run.label, pred, real[sl, c:], real[sl, :c])
            if sl.start == 0:
                shown[run.label] = torch.cat([real[: len(pred[: ec.videos]), :c], pred[: ec.videos]], 1)
        figures[run.label] = figures_for(run, features, data, tokenizer, fsq, grid, out_dir, gen)
        if ec.dci and model.has_slots and "positions" in data:
            dci[run.label] = slot_dci(model, features, data["positions"], ec, device)
        if model.has_slots and "cells" in data:
            assignment[run.label], figure = slot_assignment(run, features, data, grid, out_dir, device)
            figures[run.label].append(figure)
        if ec.transfer and model.latent in FAMILIES:
            transfer[run.label] = transfer_scores(run, tokenizer_id, tokenizer.cfg.levels, grid, device)
    if dci:
        from train.dci import random_slots_like

        some = next(r.model for r in runs if r.model.has_slots)
        dci["Random"] = dci_from_slots(
            random_slots_like(all_slots(some, features, ec, device), seed=ec.seed), data["positions"], ec
        )

    video = out_dir / "videos" / f"{cfg.data.dataset}-rollouts.gif"
    eval_report.write_gif(eval_report.video_grid(list(shown.values()), list(shown)), video)
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


def all_slots(model, features: torch.Tensor, ec: EvalConfig, device) -> torch.Tensor:
    """[W, L, N, F] -> slots of every frame [W * L, K, D]."""
    out = [model.slots(features[sl].to(device)).cpu() for sl in chunks(len(features), ec.batch_clips)]
    return torch.cat(out).flatten(0, 1)


def slot_assignment(run: Run, features, data, grid, out_dir: Path, device) -> tuple[dict, str]:
    """Which slot owns which agent in every frame (``train/assignment.py``): consistency over time, how
    often two agents share a slot, and a figure of the first clips -> (stats, figure path relative to out)."""
    model, ec = run.model, run.cfg.eval
    attn = torch.cat(
        [model.slot_attention(features[sl].to(device)).cpu() for sl in chunks(len(features), ec.batch_clips)]
    )
    stats = assignment_stats(agent_slot_mass(attn, data["positions"], data["cells"], grid))
    owners = stats.pop("owners")
    path = out_dir / "figures" / f"{run.cfg.data.dataset}-{run.path.name}-assignment.png"
    eval_report.assignment_figure(owners[:3], stats["sharing"], f"{run.label} slot-agent assignment", path)
    return stats, str(path.relative_to(out_dir))


def slot_dci(model, features, positions, ec, device) -> dict[str, float]:
    return dci_from_slots(all_slots(model, features, ec, device), positions, ec)


def dci_from_slots(slots: torch.Tensor, positions: torch.Tensor, ec: EvalConfig) -> dict[str, float]:
    from train.dci import dci

    return dci(slots, positions.flatten(0, 1), seed=ec.seed)


def label_runs(runs: list[Run]) -> None:
    """Column labels: the model's display name, or the run folder's name where a model appears twice."""
    by_dataset_model: dict[tuple[str, str], int] = {}
    for r in runs:
        key = (r.cfg.data.dataset, r.cfg.model)
        by_dataset_model[key] = by_dataset_model.get(key, 0) + 1
    for r in runs:
        unique = by_dataset_model[(r.cfg.data.dataset, r.cfg.model)] == 1
        r.label = eval_report.DISPLAY.get(r.cfg.model, r.cfg.model) if unique else r.path.name


def main(run_dirs: list[str | Path], overrides: list[str] | None = None) -> Path:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    overrides = list(overrides or [])
    runs = [load_run(Path(p), device, overrides) for p in run_dirs]
    label_runs(runs)
    datasets: dict[str, list[Run]] = {}
    for r in runs:
        datasets.setdefault(r.cfg.data.dataset, []).append(r)
    ec = runs[0].cfg.eval
    out_dir = Path(ec.out or "runs/eval-" + "-".join(datasets))
    results = {}
    for name, group in datasets.items():
        results[name] = evaluate_dataset(group, out_dir, device)
    write_reports(results, out_dir)
    return out_dir


SCORES_SCHEMA = 1  # scores.json layout version (docs/results.md, "scores.json"); bump on any change


def git_commit() -> str | None:
    """The commit of this checkout (None outside a git checkout), recorded with every score."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True
        )
    except OSError:
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def write_reports(results: dict[str, dict], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    scores = {
        "schema_version": SCORES_SCHEMA,
        "commit": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "datasets": results,
    }
    (out_dir / "scores.json").write_text(json.dumps(scores, indent=1))
    lines = ["# World model accuracy (paper Table 1 layout)", "", eval_report.table1(results), ""]
    for name, r in results.items():
        lines.append(
            f"- **{name}**: {r['windows']} {r['split']} windows, {r['context_frames']} context frame(s) + "
            f"{r['rollout_steps']}-step autoregressive rollouts scored against real frames; Recon = the "
            f"tokenizer's reconstruction of the same frames; video: `{r['video']}`."
        )
        copy, recon = r["rows"].get("Copy", {}), r["rows"].get("Recon", {})
        if copy:
            lines.append(
                f"  Floor (Copy: the decoded last context frame held): PSNR {copy['psnr']:.2f}, "
                f"SSIM {copy['ssim']:.3f}."
            )
        if copy and recon and recon["psnr"] <= copy["psnr"]:
            lines.append(
                "  **Warning:** the tokenizer's reconstruction (Recon) is no better than holding the last "
                "frame: the tokenizer has not learned this data, so differences between models mean "
                "nothing. Train it longer (tokenizer_train.steps) and check its image grids."
            )
        for metric, why in r["skipped"].items():
            lines.append(f"  {metric.upper()} skipped: {why}.")
        for shard, m in sorted(r.get("missing", {}).items()):
            gave = f"{m['got']}/{m['expected']}"
            lines.append(f"  **Missing data** (eval.allow_partial): {shard} gave {gave}: {m['problem']}.")
        has_fvd = any("fvd" in row for row in r["rows"].values())
        if has_fvd and r["windows"] < 256:
            lines.append(
                f"  FVD from {r['windows']} videos per row: biased upward; compare only at equal counts."
            )
    (out_dir / "table1.md").write_text("\n".join(lines) + "\n")
    write_transfer_report(results, out_dir)
    dci = {name: r["dci"] for name, r in results.items() if r["dci"]}
    if dci:
        text = ["# Slot representation: DCI against agent positions (paper Table 2 layout)", ""]
        for name, table in dci.items():
            frames = next(iter(table.values()))
            text += [
                f"## {name}",
                "",
                eval_report.table2_dci(table),
                "",
                f"Probe trained on {frames['num_train_frames']} frames, scored on "
                f"{frames['num_val_frames']}; Random (Gaussian slots) is the probe's floor at this size "
                "(its penalty is chosen by held-out likelihood, so it stays near 0).",
                "",
            ]
            assignment = results[name].get("assignment", {})
            if assignment:
                text += [eval_report.assignment_table(assignment), ""]
        (out_dir / "table2_dci.md").write_text("\n".join(text))
    print((out_dir / "table1.md").read_text())


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
