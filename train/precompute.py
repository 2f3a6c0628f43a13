"""Stream every split's clip shards through the frozen tokenizer into the token cache on disk.

    python train/precompute.py --config configs/multigrid.yaml --tokenizer runs/tok-multigrid/ckpt/latest
    torchrun --nproc_per_node=8 train/precompute.py --config ... --tokenizer ...   # shards split over ranks

Output: ``<root>/<dataset>/tokens/<tokenizer-id>/<split>/`` (format in ``shards/tokens.py``) plus
``recon.json`` / ``recon.md`` next to the splits: the frozen tokenizer's reconstruction PSNR/SSIM on
val and test (the "Recon" ceiling of the paper's Table 1). The tokenizer id is a hash of the checkpoint
file, so a cache is tied to the weights that made it. DataLoader workers decode while the model
encodes (GPU when present, bf16 autocast for the convolutions, FSQ in fp32). One part per shard,
written atomically: a killed run resumes where it was, and a rerun of a finished one does nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from tqdm import tqdm

from model.metrics import psnr, ssim, to_unit
from model.tokenizer import Tokenizer, to_float
from shards.loader import ClipDataset, ClipLoader, list_shards
from shards.manifest import load_manifest
from shards.tokens import (
    CacheInfo,
    cache_dir,
    clear_stale_temporaries,
    manifest_sha256,
    part_done,
    write_index,
    write_part,
)
from train.common import barrier, cleanup_distributed, init_distributed, load_tokenizer
from train.config import Config, load_config


class PartBuffer:
    """Codes and ground truth of one shard's clips, in stream (= tar) order, until the part is written."""

    def __init__(self) -> None:
        self.codes: list[np.ndarray] = []
        self.keys: list[str] = []
        self.episodes: list[int] = []
        self.clips: list[int] = []
        self.actions: list[np.ndarray] = []
        self.positions: list[np.ndarray] = []
        self.rewards: list[np.ndarray] = []
        self.dones: list[np.ndarray] = []

    def add(self, codes: np.ndarray, sample: dict) -> None:
        self.codes.append(codes)
        self.keys.append(sample["key"])
        self.episodes.append(int(sample["meta"]["episode"]))
        self.clips.append(int(sample["meta"]["clip"]))
        if sample.get("actions") is not None:
            self.actions.append(sample["actions"].numpy())
        if sample.get("positions") is not None:
            self.positions.append(sample["positions"].numpy())
        if sample.get("rewards") is not None:
            self.rewards.append(sample["rewards"].numpy())
            self.dones.append(sample["dones"].numpy())

    def write(self, split_dir: Path, stem: str) -> None:
        write_part(
            split_dir,
            stem,
            self.codes,
            self.keys,
            self.episodes,
            self.clips,
            actions=self.actions if self.actions and len(self.actions) == len(self.codes) else None,
            positions=self.positions if self.positions and len(self.positions) == len(self.codes) else None,
            rewards=self.rewards if self.rewards and len(self.rewards) == len(self.codes) else None,
            dones=self.dones if self.dones and len(self.dones) == len(self.codes) else None,
        )


def unbatch(batch: dict) -> list[dict]:
    """collate_clips batch -> per-clip dicts (the fields precompute keeps)."""
    out = []
    for i, key in enumerate(batch["key"]):
        sample = {"key": key, "meta": batch["meta"][i], "shard": batch["shard"][i]}
        for name in ("actions", "positions", "rewards", "dones"):
            if name in batch:
                sample[name] = batch[name][i]
        out.append(sample)
    return out


@torch.no_grad()
def encode_split(
    cfg: Config,
    tokenizer: Tokenizer,
    tokenizer_id: str,
    split: str,
    rank: int,
    world: int,
    device: torch.device,
) -> Path | None:
    """Write this rank's missing parts of ``split``; rank 0 writes the index once all ranks are done."""
    pc = cfg.precompute
    if load_manifest(cfg.dataset_dir)["splits"][split]["shards"] == 0:  # tiny datasets can lack a split
        print(f"precompute: {cfg.dataset_dir} has no {split} shards; skipping that split", file=sys.stderr)
        return None
    shards = list_shards(cfg.dataset_dir, split)
    split_dir = cache_dir(cfg.data.root, cfg.data.dataset, tokenizer_id, split)
    if rank == 0:
        split_dir.mkdir(parents=True, exist_ok=True)
        clear_stale_temporaries(split_dir)
    barrier()
    mine = [
        s for i, s in enumerate(shards) if i % world == rank and not part_done(split_dir, Path(s.path).stem)
    ]
    if mine:
        expected = {Path(s.path).stem: s.num_samples for s in mine}
        dataset = ClipDataset([s.path for s in mine], rank=0, world_size=1)  # ranks split shards above
        loader = ClipLoader(dataset, batch_size=pc.batch_clips, num_workers=cfg.data.num_workers)
        buffers = {stem: PartBuffer() for stem in expected}
        use_bf16 = pc.bf16 and device.type == "cuda"
        bar = tqdm(
            total=sum(expected.values()),
            desc=f"precompute {split} (rank {rank})",
            unit="clip",
            dynamic_ncols=True,
            disable=rank != 0,
        )
        for batch in loader:
            frames = to_float(batch["frames"].to(device, non_blocking=True))  # [B, T, 3, H, W]
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                codes = tokenizer.encode(frames)  # [B, T, h, w] int64 (FSQ runs in fp32 inside)
            codes = codes.to(torch.uint16).cpu().numpy()
            for clip_codes, sample in zip(codes, unbatch(batch), strict=True):
                stem = Path(sample["shard"]).stem
                buffers[stem].add(clip_codes, sample)
                if len(buffers[stem].codes) == expected[stem]:  # shard complete: write its part now
                    buffers.pop(stem).write(split_dir, stem)
            bar.update(len(codes))
        bar.close()
        for stem, buffer in buffers.items():  # shards that lost corrupt samples end with the stream
            buffer.write(split_dir, stem)
        if dataset.stats["skipped"]:
            print(
                f"precompute {split}: skipped {dataset.stats['skipped']} corrupt clip(s): "
                f"{dataset.stats['skipped_by_reason']}",
                file=sys.stderr,
            )
    barrier()
    if rank == 0:
        info = CacheInfo(
            dataset=cfg.data.dataset,
            split=split,
            tokenizer_id=tokenizer_id,
            manifest_sha256=manifest_sha256(cfg.dataset_dir),
            levels=tuple(tokenizer.cfg.levels),
            grid=(tokenizer.cfg.grid_size, tokenizer.cfg.grid_size),
        )
        write_index(split_dir, info, [Path(s.path).stem for s in shards])
    return split_dir


@torch.no_grad()
def recon_report(cfg: Config, tokenizer: Tokenizer, out_dir: Path, device: torch.device) -> dict:
    """Reconstruction PSNR/SSIM of the frozen tokenizer on val and test clips: the Recon ceiling."""
    report = {}
    for split in ("val", "test"):
        try:
            dataset = ClipDataset(cfg.dataset_dir, split, rank=0, world_size=1)
        except ValueError:
            continue
        loader = ClipLoader(dataset, batch_size=cfg.precompute.batch_clips, num_workers=0)
        scores_p, scores_s, n = [], [], 0
        for batch in loader:
            frames = to_float(batch["frames"].to(device))
            recon = tokenizer.decode(tokenizer.encode(frames))
            scores_p.append(psnr(to_unit(recon), to_unit(frames)).flatten().cpu())
            scores_s.append(ssim(to_unit(recon), to_unit(frames)).flatten().cpu())
            n += len(frames)
            if cfg.precompute.report_clips and n >= cfg.precompute.report_clips:
                break
        if scores_p:
            p, s = torch.cat(scores_p), torch.cat(scores_s)
            report[split] = {
                "psnr": round(float(p.clamp(max=100).mean()), 3),
                "ssim": round(float(s.mean()), 4),
                "clips": n,
                "frames": int(p.numel()),
            }
    (out_dir / "recon.json").write_text(json.dumps(report, indent=1))
    lines = ["| split | PSNR (dB) | SSIM | frames |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['psnr']:.2f} | {v['ssim']:.4f} | {v['frames']} |" for k, v in report.items()]
    (out_dir / "recon.md").write_text(
        "# Tokenizer reconstruction (Recon ceiling)\n\n" + "\n".join(lines) + "\n"
    )
    return report


def main(cfg: Config, tokenizer_path: str | Path) -> Path:
    dist_info = init_distributed()
    tokenizer, tokenizer_id = load_tokenizer(tokenizer_path, dist_info.device)
    root = cache_dir(cfg.data.root, cfg.data.dataset, tokenizer_id, "x").parent
    source = {
        "dataset": cfg.data.dataset,
        "manifest_sha256": manifest_sha256(cfg.dataset_dir),
        "tokenizer": str(Path(tokenizer_path).resolve()),
    }
    source_path = root / "source.json"
    if source_path.exists():
        old = json.loads(source_path.read_text())
        if old["manifest_sha256"] != source["manifest_sha256"]:
            raise RuntimeError(
                f"{root} was started from other shards (the dataset was re-ingested since): delete {root} "
                "and rerun precompute"
            )
    elif dist_info.is_main:
        root.mkdir(parents=True, exist_ok=True)
        source_path.write_text(json.dumps(source, indent=1))
    for split in cfg.precompute.splits:
        encode_split(
            cfg, tokenizer, tokenizer_id, split, dist_info.rank, dist_info.world_size, dist_info.device
        )
    if dist_info.is_main:
        report = recon_report(cfg, tokenizer, root, dist_info.device)
        print(f"token cache: {root}\nRecon: {json.dumps(report)}")
    cleanup_distributed()
    return root


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a preset in configs/, e.g. configs/multigrid.yaml")
    p.add_argument("--tokenizer", help="tokenizer checkpoint (default: runs/tok-<dataset>/ckpt/latest)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. precompute.batch_clips=32")
    args = p.parse_args()
    cfg = load_config(args.config, args.overrides)
    main(cfg, args.tokenizer or cfg.tokenizer_run_dir / "ckpt" / "latest")
