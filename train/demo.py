"""The whole job end to end on a small MultiGrid set: ``make demo`` (CPU when there is no GPU).

    python train/demo.py [--config configs/demo.yaml] [key=value ...]

1. ingest: render the preset's MultiGrid episodes into clip shards (Ray Data, local)  -> data/demo/
2. tokenizer: train the FSQ tokenizer on the shards                                    -> runs/demo/tok/
3. precompute: encode every split into the token cache, with the Recon report  -> data/demo/.../tokens/
4. FLAM: train on the cached tokens                                                     -> runs/demo/flam/
5. report: on val clips, FLAM's n-step rollout vs the real frames next to the tokenizer's Recon ceiling
   and the copy-first-frame floor                                          -> runs/demo/report.md (+ GIF)

Sizes are the preset's (configs/demo.yaml), not constants here. Every stage resumes: rerunning after a
kill finishes the job without redoing finished work.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from model.fsq import FSQ
from shards.loader import ClipDataset, ClipLoader
from train import lam, precompute, tokenizer
from train.common import load_tokenizer, load_world_model
from train.config import Config, load_config
from train.rollouts import score_against_pixels, write_gif


def ingest(cfg: Config) -> None:
    import ray

    from ingest.config import RunOptions, build_config
    from ingest.pipeline import print_summary, run_ingest

    manifest = run_ingest(build_config(cfg.data.dataset, cfg.ingest), RunOptions(out=cfg.data.root))
    print_summary(manifest, cfg.dataset_dir)
    ray.shutdown()  # free the local Ray workers before training


@torch.no_grad()
def report(cfg: Config, lam_ckpt: Path, out_dir: Path, clips: int = 16) -> dict:
    """Rollout scores of the trained model on val clips, against real pixels."""
    device = torch.device("cpu")
    tok, _ = load_tokenizer(cfg.tokenizer_checkpoint, device)
    model, _, step = load_world_model(lam_ckpt, device)
    fsq = FSQ(tok.cfg.levels)
    n = cfg.lam_train.rollout_steps + 1
    loader = ClipLoader(ClipDataset(cfg.dataset_dir, "val", window=n, seed=1), batch_size=clips)
    frames = next(iter(loader))["frames"]  # [B, n, H, W, 3] real val frames
    out = score_against_pixels(model, tok, fsq, frames)
    rows = {
        name: {"psnr": float(out[f"{name}_psnr"].mean()), "ssim": float(out[f"{name}_ssim"].mean())}
        for name in ("recon", "model", "copy")
    }
    per_step = [round(float(v), 2) for v in out["model_psnr"].mean(0)]
    result = {
        "clips": int(frames.shape[0]),
        "rollout_steps": n - 1,
        "step": step,
        "rows": rows,
        "model_psnr_by_step": per_step,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(result, indent=1))
    video = write_gif([out["frames"][k][:4] for k in ("truth", "recon", "model")], out_dir / "rollout.gif")
    lines = [
        f"# Demo report: {cfg.model} on {cfg.data.dataset} ({result['clips']} val clips, "
        f"{n - 1}-step rollouts, step {step})",
        "",
        "| row | PSNR (dB) | SSIM |",
        "|---|---|---|",
        f"| Recon (tokenizer ceiling) | {rows['recon']['psnr']:.2f} | {rows['recon']['ssim']:.3f} |",
        f"| {cfg.model.upper()} rollout | {rows['model']['psnr']:.2f} | {rows['model']['ssim']:.3f} |",
        f"| copy first frame (floor) | {rows['copy']['psnr']:.2f} | {rows['copy']['ssim']:.3f} |",
        "",
        f"PSNR by rollout step: {per_step}",
        "",
        f"Video ({video.name}): ground truth | tokenizer reconstruction | {cfg.model} rollout, 4 clips.",
    ]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    return result


def main(cfg: Config) -> dict:
    start = time.perf_counter()
    stages = []
    for name, run in (
        ("ingest", lambda: ingest(cfg)),
        ("tokenizer", lambda: tokenizer.main(cfg)),
        ("precompute", lambda: precompute.main(cfg, cfg.tokenizer_checkpoint)),
        ("flam", lambda: lam.main(cfg)),
    ):
        t = time.perf_counter()
        print(f"\n== {name} ==", flush=True)
        run()
        stages.append(f"{name} {time.perf_counter() - t:.0f}s")
    out_dir = cfg.lam_run_dir.parent
    result = report(cfg, cfg.lam_run_dir / "ckpt" / "latest", out_dir)
    print("\n" + (out_dir / "report.md").read_text())
    print(f"stages: {', '.join(stages)}; total {time.perf_counter() - start:.0f}s")
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. lam_train.steps=100")
    args = p.parse_args()
    main(load_config(args.config, args.overrides))
