"""Stream every split's clip shards through the frozen tokenizer into the token cache on disk.

    python -m train.precompute --config configs/multigrid.yaml     # the tokenizer of runs/tok-multigrid/
    python -m train.precompute --config configs/multigrid.yaml data.tokenizer=runs/tok-a/ckpt/latest
    torchrun --nproc_per_node=8 -m train.precompute --config ...   # shards split over ranks

Output: ``<root>/<dataset>/tokens/<tokenizer-id>/<split>/`` (format in ``shards/tokens.py``) plus
``recon.json`` / ``recon.md`` next to the splits: the frozen tokenizer's reconstruction PSNR/SSIM on
val and test (the "Recon" ceiling of the paper's Table 1). The tokenizer id is a hash of the checkpoint
file, so a cache is tied to the weights that made it. DataLoader workers decode while the model
encodes (GPU when present, bf16 autocast for the convolutions, FSQ in fp32). One part per shard,
written atomically: a killed run resumes where it was, and a rerun of a finished one does nothing.

Nothing is lost silently: every shard is checked against its manifest entry before it is read (size,
and sha256 unless ``data.verify_shards=false``), and every part is compared with the clip count its
shard should give. A part from a missing, damaged or short shard is written with what could be read
but marked incomplete (in its part.json and the split's index.json), the summary names it, training
refuses it unless told otherwise, and a rerun redoes it (once the shard is repaired by rerunning the
same ingest, it comes out whole). One precompute at a time per cache: a second one is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model.tokenizer import Tokenizer, to_float
from shards.files import exclusive, read_json
from shards.integrity import REPAIR_HINT, check_shards, describe
from shards.loader import ClipDataset, ClipLoader, ShardInfo, list_shards
from shards.manifest import load_manifest
from shards.tokens import (
    RECON_JSON,
    RECON_MD,
    SOURCE_NAME,
    CacheInfo,
    cache_dir,
    cache_root,
    clear_stale_temporaries,
    manifest_sha256,
    mark_incomplete,
    part_done,
    read_part_record,
    write_index,
    write_part,
)
from train.common import barrier, cleanup_distributed, init_distributed, load_tokenizer
from train.config import Config, load_config
from train.eval.rollout import decode_tokens, encode_windows
from train.eval.scoring import Scorer


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

    def write(self, split_dir: Path, stem: str, expected: int | None, problem: str = "") -> None:
        """Write the part; it is complete only with ``expected`` clips and no ``problem``."""
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
            expected=expected,
            problem=problem,
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


def stem(shard: ShardInfo) -> str:
    return Path(shard.path).stem


@torch.no_grad()
def encode_split(
    cfg: Config,
    tokenizer: Tokenizer,
    tokenizer_id: str,
    split: str,
    rank: int,
    world: int,
    device: torch.device,
) -> dict | None:
    """Write this rank's missing parts of ``split``; rank 0 writes the index once all ranks are done and
    returns the split's incomplete parts (``{stem: {"expected", "got", "problem"}}``; other ranks: {})."""
    if load_manifest(cfg.dataset_dir)["splits"][split]["shards"] == 0:  # tiny datasets can lack a split
        print(f"precompute: {cfg.dataset_dir} has no {split} shards; skipping that split", file=sys.stderr)
        return None
    shards = list_shards(cfg.dataset_dir, split)
    split_dir = cache_dir(cfg.data.root, cfg.data.dataset, tokenizer_id, split)
    if rank == 0:
        split_dir.mkdir(parents=True, exist_ok=True)
        clear_stale_temporaries(split_dir)
    barrier()
    mine = [s for i, s in enumerate(shards) if i % world == rank]
    todo = [s for s in mine if not part_done(split_dir, stem(s), s.num_samples)]
    readable, problems = check_shards(todo, verify=cfg.data.verify_shards)
    for shard in todo:
        if stem(shard) in problems:  # never read a missing or damaged shard: an empty, incomplete part
            PartBuffer().write(split_dir, stem(shard), shard.num_samples, problems[stem(shard)])
    if readable:
        encode_shards(cfg, tokenizer, readable, split_dir, split, rank, device)
    barrier()
    if rank != 0:
        return {}
    info = CacheInfo(
        dataset=cfg.data.dataset,
        split=split,
        tokenizer_id=tokenizer_id,
        manifest_sha256=manifest_sha256(cfg.dataset_dir),
        levels=tuple(tokenizer.cfg.levels),
        grid=(tokenizer.cfg.grid_size, tokenizer.cfg.grid_size),
    )
    index = write_index(split_dir, info, [stem(s) for s in shards])
    missing = {
        p["name"]: {"expected": p["expected"], "got": p["clips"], "problem": p["problem"]}
        for p in index["parts"]
        if not p["complete"]
    }
    if missing:
        print(
            f"precompute {split}: {describe(missing)}\nThese parts are marked incomplete in "
            f"{split_dir / 'index.json'}: training refuses them (unless lam_train.allow_partial=true), and a "
            f"rerun redoes them. Fix: {REPAIR_HINT}.",
            file=sys.stderr,
        )
    return missing


def encode_shards(
    cfg: Config,
    tokenizer: Tokenizer,
    shards: list[ShardInfo],
    split_dir: Path,
    split: str,
    rank: int,
    device: torch.device,
) -> None:
    """Encode ``shards`` (intact by size/sha256) into one part each. A part is written as soon as its
    shard gave every clip its manifest lists; the rest when the stream ends, then marked incomplete."""
    pc = cfg.precompute
    expected = {stem(s): s.num_samples for s in shards}
    dataset = ClipDataset(shards, rank=0, world_size=1)  # ranks split shards above; counts are checked
    loader = ClipLoader(dataset, batch_size=pc.batch_clips, num_workers=cfg.data.num_workers)
    buffers = {name: PartBuffer() for name in expected}
    over: set[str] = set()  # shards that gave more clips than their manifest entry lists
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
            name = Path(sample["shard"]).stem
            if name not in buffers:  # its part is written: the shard holds more than the manifest says
                over.add(name)
                continue
            buffers[name].add(clip_codes, sample)
            if len(buffers[name].codes) == expected[name]:  # shard complete: write its part now
                buffers.pop(name).write(split_dir, name, expected[name])
        bar.update(len(codes))
    bar.close()
    for name, buffer in buffers.items():  # short shards (broken, or samples skipped) end with the stream
        buffer.write(split_dir, name, expected[name])
    for name in sorted(over):
        mark_incomplete(split_dir, name, "the shard holds more clips than its manifest entry lists")
    if dataset.stats["skipped"]:
        print(
            f"precompute {split}: skipped {dataset.stats['skipped']} corrupt clip(s): "
            f"{dataset.stats['skipped_by_reason']}",
            file=sys.stderr,
        )


@torch.no_grad()
def recon_report(cfg: Config, tokenizer: Tokenizer, tokenizer_id: str, device: torch.device) -> dict:
    """Reconstruction PSNR/SSIM of the frozen tokenizer on val and test clips, every frame: the Recon
    ceiling, decoded and scored as evaluation scores its Recon row (``train/eval/scoring.py``)."""
    report = {}
    for split in ("val", "test"):
        try:
            shards = list_shards(cfg.dataset_dir, split)
        except ValueError:
            continue
        split_dir = cache_dir(cfg.data.root, cfg.data.dataset, tokenizer_id, split)
        # only shards whose part is complete: they were whole (and verified) when encoded
        shards = [s for s in shards if (read_part_record(split_dir, stem(s)) or {}).get("complete")]
        if not shards:
            continue
        dataset = ClipDataset(shards, rank=0, world_size=1)
        loader = ClipLoader(dataset, batch_size=cfg.precompute.batch_clips, num_workers=0)
        scorer, n = Scorer(device), 0
        for batch in loader:
            features = encode_windows(tokenizer, batch["frames"], len(batch["frames"]), device)
            scorer.add(
                "Recon", decode_tokens(tokenizer, features.to(device)).cpu(), to_float(batch["frames"])
            )
            n += len(batch["frames"])
            if cfg.precompute.report_clips and n >= cfg.precompute.report_clips:
                break
        if n:
            scores = scorer.frame_scores("Recon")
            report[split] = {
                "psnr": round(float(scores["psnr"].mean()), 3),
                "ssim": round(float(scores["ssim"].mean()), 4),
                "clips": n,
                "frames": int(scores["psnr"].numel()),
            }
    out_dir = cache_root(cfg.data.root, cfg.data.dataset, tokenizer_id)
    (out_dir / RECON_JSON).write_text(json.dumps(report, indent=1))
    lines = ["| split | PSNR (dB) | SSIM | frames |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['psnr']:.2f} | {v['ssim']:.4f} | {v['frames']} |" for k, v in report.items()]
    (out_dir / RECON_MD).write_text(
        "# Tokenizer reconstruction (Recon ceiling)\n\n" + "\n".join(lines) + "\n"
    )
    return report


def main(cfg: Config) -> Path:
    """Encode every split of ``cfg.precompute.splits`` with the tokenizer ``cfg.tokenizer_checkpoint``
    (``data.tokenizer``); returns the cache root."""
    dist_info = init_distributed()
    tokenizer_path = cfg.tokenizer_checkpoint
    tokenizer, tokenizer_id = load_tokenizer(tokenizer_path, dist_info.device)
    root = cache_root(cfg.data.root, cfg.data.dataset, tokenizer_id)
    # One precompute per cache (rank 0 holds the lock for the job): a second one would delete the
    # first one's temporaries.
    with exclusive(root, "precompute") if dist_info.is_main else contextlib.nullcontext():
        check_source(cfg, root, tokenizer_path, dist_info.is_main)
        for split in cfg.precompute.splits:
            encode_split(
                cfg, tokenizer, tokenizer_id, split, dist_info.rank, dist_info.world_size, dist_info.device
            )
        if dist_info.is_main:
            report = recon_report(cfg, tokenizer, tokenizer_id, dist_info.device)
            print(f"token cache: {root}\nRecon: {json.dumps(report)}")
    cleanup_distributed()
    return root


def check_source(cfg: Config, root: Path, tokenizer_path: str | Path, is_main: bool) -> None:
    """Refuse a cache begun from other shards; record the source of a new one (rank 0)."""
    source = {
        "dataset": cfg.data.dataset,
        "manifest_sha256": manifest_sha256(cfg.dataset_dir),
        "tokenizer": str(Path(tokenizer_path).resolve()),
    }
    source_path = root / SOURCE_NAME
    if source_path.exists():
        old = read_json(source_path, f"delete {root} and rerun precompute")
        if not isinstance(old, dict) or old.get("manifest_sha256") != source["manifest_sha256"]:
            raise RuntimeError(
                f"{root} was started from other shards (the dataset was re-ingested since): delete {root} "
                "and rerun precompute"
            )
    elif is_main:
        root.mkdir(parents=True, exist_ok=True)
        source_path.write_text(json.dumps(source, indent=1))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a preset in configs/, e.g. configs/multigrid.yaml")
    p.add_argument(
        "overrides",
        nargs="*",
        help="dotted overrides, e.g. data.tokenizer=runs/tok-multigrid/ckpt/latest precompute.batch_clips=32",
    )
    args = p.parse_args()
    main(load_config(args.config, args.overrides))
