"""Capacity sweeps of the latent-action families (paper 003): one run per family and capacity value.

    python -m train.sweep --config configs/multigrid.yaml --brief --model flam               # all families
    python -m train.sweep --config configs/multigrid.yaml --brief --model flam --latent sparse
    make sweep DATASET=multigrid MODEL=flam LATENT=sparse

For ``--model`` (any latent-action model of model/zoo.py) and each family of ``--latent`` (default: kl,
sparse, vq), one run per value of its capacity knob (``sweep.kl``: beta, ``sweep.sparse``: lambda_l1,
``sweep.vq``: codebook size), trained with ``train/lam.py`` on ``make compare``'s token cache of the dataset
(same tokenizer). Scores per run:

- one-step IDM prediction error (the paper's capacity measure): the teacher-forced next-frame error in FSQ-
  feature space with the IDM's latents (posterior means / latents / codes) on ``sweep.windows`` test
  windows of ``lam.max_frames`` frames; low = the latent carries much of the next frame;
- rollout PSNR (Table 1 protocol, ``train/evaluate.py`` without FVD, LPIPS and figures), DCI for slot
  models on MultiGrid, and the scene-cut and cycle ratios (``train/eval/transfer.py``).

Writes ``runs/sweep-<dataset>-<model>[-brief]/``: the runs, eval/ (Table 1, DCI, transfer tables),
``sweep.md``, ``scores.json``, ``sweep.png`` (error and PSNR against capacity, one panel per family).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from model.latents import FAMILIES
from model.zoo import build_model
from shards.config import merge, split_overrides, to_dict
from shards.tokens import cache_dir, file_id
from train import compare, evaluate
from train.common import load_world_model
from train.config import Config, check_stages, load_config
from train.eval.transfer import load_windows

KNOB = {"kl": ("beta", "lam.beta"), "sparse": ("lambda_l1", "lam.l1"), "vq": ("codebook", "lam.vq_codes")}
# Evaluation of every sweep run: Table 1's rollouts and DCI, no FVD / LPIPS / figures (many runs, CPU).
EVAL_ARGS = ["eval.fvd=false", "eval.st_lpips=false", "eval.control=false", "eval.latent_plot=false"]


def run_configs(cfg: Config, families: list[str], model: str, root: Path, sweep_root: Path) -> list[Config]:
    """One config per (family, value), run folders ``<sweep_root>/<family>-<value>``."""
    out = []
    for family in families:
        _, key = KNOB[family]
        for value in getattr(cfg.sweep, family):
            data = to_dict(compare.with_runs(cfg, root, model))
            data = merge(data, {"lam": {"latent": family, key.split(".")[1]: value}})
            data["lam_train"]["run_dir"] = str(sweep_root / f"{family}-{value:g}")
            out.append(load_config(None, data))
    return out


@torch.no_grad()
def one_step_error(run: Path, windows: int, device: torch.device) -> dict[str, float]:
    """Teacher-forced one-step error with the IDM's latents on cached test windows (eval mode: no noise)."""
    model, config, _ = load_world_model(run / "ckpt" / "latest", device)
    cfg = load_config(None, config)
    split = cache_dir(cfg.data.root, cfg.data.dataset, file_id(cfg.tokenizer_checkpoint), cfg.eval.split)
    levels = tuple(cfg.tokenizer.levels)
    data = load_windows(split, levels, cfg.lam.max_frames, windows)
    pred, copy = [], []
    for lo in range(0, len(data.features), 16):
        _, metrics = model({"features": data.features[lo : lo + 16].to(device)})
        pred.append(float(metrics["pred_mse"]))
        copy.append(float(metrics["copy_mse"]))
    return {
        "idm_mse": sum(pred) / len(pred),
        "copy_mse": sum(copy) / len(copy),
        "windows": len(data.features),
    }


def main(
    config: str | Path,
    overrides: list[str],
    model: str = "flam",
    latents: list[str] | None = None,
    brief: bool = False,
    nproc: int = 1,
) -> Path:
    start = time.perf_counter()
    families = latents or list(FAMILIES)
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"--latent {sorted(unknown)} unknown; choose among {FAMILIES}")
    cfg = compare.preset(config, overrides, brief)
    # which latents the model has (any token shape will do: the cache's is read when each run trains)
    probe = replace(cfg.lam, num_tokens=cfg.lam.num_tokens or 1, feature_dim=cfg.lam.feature_dim or 1)
    if build_model(model, probe).latent not in FAMILIES:
        raise ValueError(
            f"--model {model} has no latent actions to sweep (a latent-action model: flam, genie, ...)"
        )
    root = compare.compare_root(cfg.data.dataset, brief)
    cfg = compare.with_runs(cfg, root, model)
    sweep_root = Path(cfg.sweep.out or f"runs/sweep-{cfg.data.dataset}-{model}{'-brief' if brief else ''}")
    cfgs = run_configs(cfg, families, model, root, sweep_root)
    for c in cfgs:  # refuse a run that never leaves its first stage before any training
        check_stages(c)
    compare.prepare(cfg, root, nproc)
    print(f"== sweep {model}: {len(cfgs)} runs ({', '.join(c.lam_run_dir.name for c in cfgs)})", flush=True)
    compare.train_models(cfgs, sweep_root, nproc, jobs=2 if brief else 1)
    eval_args = [*EVAL_ARGS, *(o for o in overrides if o.startswith("eval."))]
    scores = score_runs(cfgs, cfg, sweep_root, eval_args)
    scores.update(model=model, seconds=round(time.perf_counter() - start, 1))
    return write_reports(scores, sweep_root)


def score_runs(cfgs: list[Config], cfg: Config, sweep_root: Path, eval_args: list[str]) -> dict:
    """Evaluate the trained sweep runs (``train/evaluate.py``, ``one_step_error``) -> the sweep's scores."""
    print("== evaluate", flush=True)
    eval_out = sweep_root / "eval"
    evaluate.main([c.lam_run_dir for c in cfgs], [*eval_args, f"eval.out={eval_out}"])
    evaluated = json.loads((eval_out / "scores.json").read_text())["datasets"][cfg.data.dataset]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    labels = {Path(r["path"]): label for label, r in evaluated["runs"].items()}
    rows = []
    for c in cfgs:
        family = c.lam.latent
        name, key = KNOB[family]
        label = labels[c.lam_run_dir]
        row = {
            "run": str(c.lam_run_dir),
            "family": family,
            "knob": name,
            "value": getattr(c.lam, key.split(".")[1]),
            **one_step_error(c.lam_run_dir, cfg.sweep.windows, device),
            "rollout_psnr": evaluated["rows"][label]["psnr"],
            "rollout_ssim": evaluated["rows"][label]["ssim"],
        }
        if label in evaluated.get("dci", {}):
            dci = evaluated["dci"][label]
            row["dci"] = {k: dci[k] for k in ("disentanglement", "completeness", "informativeness")}
        transfer = evaluated.get("transfer", {}).get(label)
        if transfer:
            row["scene_cut_ratio"] = transfer["scene_cut"]["ratio"]
            row["cycle_ratio"] = transfer["cycle"]["ratio"]
        rows.append(row)
    return {
        "dataset": cfg.data.dataset,
        "model": cfgs[0].model,
        "steps": cfg.lam_train.steps,
        "rows": rows,
        "copy_psnr": evaluated["rows"].get("Copy", {}).get("psnr"),
        "recon_psnr": evaluated["rows"].get("Recon", {}).get("psnr"),
    }


def write_reports(scores: dict, sweep_root: Path) -> Path:
    from train import sweep_report

    sweep_root.mkdir(parents=True, exist_ok=True)
    (sweep_root / "scores.json").write_text(json.dumps(scores, indent=1))
    text = sweep_report.table(scores)
    (sweep_root / "sweep.md").write_text(text)
    sweep_report.plot(scores, sweep_root / "sweep.png")
    print(text)
    return sweep_root


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a dataset preset in configs/")
    p.add_argument("--brief", action="store_true", help="CPU size: configs/brief.yaml over the preset")
    p.add_argument("--model", default="flam", help="a latent-action model of model/zoo.py")
    p.add_argument("--latent", nargs="*", default=[], help=f"families among {FAMILIES} (default: all)")
    p.add_argument("--nproc", type=int, default=1, help="GPUs per training run (torchrun on this node)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sweep.sparse=[0.4,0.01]")
    args = p.parse_args()
    latent, swept = split_overrides(args.latent)
    main(args.config, [*swept, *args.overrides], args.model, latent, args.brief, args.nproc)
