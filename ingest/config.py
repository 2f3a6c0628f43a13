"""Ingest configuration: one frozen dataclass for the job plus the per-source config, and the presets.

``DATASETS`` is the one visible table of dataset names. Any other Procgen game is accepted by name too
(``make ingest DATASET=coinrun``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ingest.multigrid import MultiGridConfig
from ingest.nuplan import NuplanConfig, count_frames_per_log, resolve_source
from ingest.procgen import POLICIES, PROCGEN_GAMES, ProcgenConfig
from ingest.splits import assign_splits
from shards.config import ConfigError, apply_overrides, from_dict, to_dict
from shards.video import CODECS

SourceConfig = MultiGridConfig | ProcgenConfig | NuplanConfig


@dataclass(frozen=True)
class IngestConfig:
    """What to ingest. Everything here is part of the dataset's identity (a rerun must match it);
    where it goes and how many workers run it are not (see ``RunOptions``)."""

    dataset: str
    source: Any  # MultiGridConfig | ProcgenConfig | NuplanConfig, chosen by the dataset preset
    episodes: int = 1000  # units to render (episodes; logs for nuPlan, 0 = all)
    clip_len: int = 16  # frames per clip; an episode gives floor(T / clip_len) non-overlapping clips
    episodes_per_shard: int = 50  # one work block = one Ray task = at most one shard per split
    seed: int = 0
    codec: str = "libx264rgb"
    crf: int = 18  # lossy libx264 only
    # Split of every unit, fixed up front by sources that know unit sizes before rendering (nuPlan logs);
    # empty = assigned per block after rendering (simulators, whose episode lengths are not known).
    unit_splits: tuple[str, ...] = ()

    @property
    def source_kind(self) -> str:
        return SOURCE_KINDS[type(self.source)]

    @property
    def num_blocks(self) -> int:
        return -(-self.episodes // self.episodes_per_shard)

    def validate(self) -> None:
        if not re.fullmatch(r"[a-z0-9_]+", self.dataset):
            raise ValueError(f"dataset name {self.dataset!r} must be lowercase letters, digits and '_'")
        for name in ("episodes", "clip_len", "episodes_per_shard"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value} (EPISODES=, CLIP_LEN= or ARGS=)")
        if self.unit_splits and (
            len(self.unit_splits) != self.episodes or not set(self.unit_splits) <= {"train", "val", "test"}
        ):
            raise ValueError(
                f"unit_splits must name a split (train/val/test) for each of the {self.episodes} units"
            )
        if self.codec not in CODECS:
            raise ValueError(f"unknown codec {self.codec!r}; choose one of {sorted(CODECS)}")
        cap = episode_cap(self.source)
        if cap is not None and self.clip_len > cap:
            raise ValueError(
                f"clip_len {self.clip_len} is longer than the episode cap {cap} of {self.dataset}: no "
                "episode could give a clip. Lower CLIP_LEN or raise the cap "
                f'(ARGS="source.{cap_key(self.source)}=...")'
            )

    def to_dict(self) -> dict[str, Any]:
        out = {**to_dict(self), "source_kind": self.source_kind}
        for key in getattr(self.source, "unused_keys", tuple)():
            out["source"].pop(key, None)
        return out


@dataclass(frozen=True)
class RunOptions:
    """How to run an ingest; not part of the dataset identity."""

    out: str = "data"
    workers: int = 0  # 0 = every core of the local machine, or the cluster's CPUs under RAY_ADDRESS
    executor: str = "ray"  # "ray" (Ray Data) or "local" (in-process, for debugging and tests)
    overwrite: bool = False
    progress: bool = True
    verify: bool = True  # on resume, check each finished shard's sha256 (False: size only, for huge sets)


SOURCE_KINDS: dict[type, str] = {
    MultiGridConfig: "multigrid",
    ProcgenConfig: "procgen",
    NuplanConfig: "nuplan",
}


def episode_cap(source: Any) -> int | None:
    """Longest possible episode of a source, in frames (None when unbounded)."""
    if isinstance(source, MultiGridConfig):
        return source.episode_len
    if isinstance(source, ProcgenConfig):
        return source.max_episode_len
    return None  # nuPlan: a log is as long as it is


def cap_key(source: Any) -> str:
    return "episode_len" if isinstance(source, MultiGridConfig) else "max_episode_len"


_PROCGEN_PRESET = dict(episodes=500, episodes_per_shard=10)

DATASETS: dict[str, IngestConfig] = {
    "multigrid": IngestConfig("multigrid", MultiGridConfig()),
    "multigrid_correlated": IngestConfig("multigrid_correlated", MultiGridConfig(variant="correlated")),
    "bigfish": IngestConfig("bigfish", ProcgenConfig(game="bigfish"), **_PROCGEN_PRESET),
    "leaper": IngestConfig("leaper", ProcgenConfig(game="leaper"), **_PROCGEN_PRESET),
    "starpilot": IngestConfig("starpilot", ProcgenConfig(game="starpilot"), **_PROCGEN_PRESET),
    # One log per work block (= Ray task, shard); episodes 0 = every log found (set by the resolver).
    "nuplan": IngestConfig("nuplan", NuplanConfig(), episodes=0, codec="libx264", episodes_per_shard=1),
}


def dataset_names() -> list[str]:
    return sorted(DATASETS)


def preset(dataset: str) -> IngestConfig:
    """The default config of ``dataset``; any Procgen game name works as well."""
    if dataset in DATASETS:
        return DATASETS[dataset]
    if dataset in PROCGEN_GAMES:
        return IngestConfig(dataset, ProcgenConfig(game=dataset), **_PROCGEN_PRESET)
    raise ValueError(
        f"unknown dataset {dataset!r}. Valid: {', '.join(dataset_names())}, or any Procgen game "
        f"({', '.join(sorted(PROCGEN_GAMES))})"
    )


def build_config(dataset: str, overrides: dict[str, Any] | None = None) -> IngestConfig:
    """Preset for ``dataset`` with nested ``overrides`` (``{"episodes": 10, "source": {...}}``) applied."""
    cfg = preset(dataset)
    overrides = dict(overrides or {})
    source_over = overrides.pop("source", None)
    if source_over:
        cfg = replace(cfg, source=apply_overrides(cfg.source, source_over, "source."))
    if overrides:
        top = {k: v for k, v in to_dict(cfg).items() if k != "source"}
        unknown = set(overrides) - set(top)
        if unknown:
            raise ConfigError(
                f"unknown ingest config key(s) {sorted(unknown)}; valid: {sorted(top)} and "
                f"source.* ({sorted(to_dict(cfg.source))})"
            )
        checked = from_dict(type(cfg), {**top, **overrides, "source": cfg.source})
        cfg = replace(checked, source=cfg.source)
    resolve = RESOLVERS.get(cfg.source_kind)
    if resolve is not None:
        cfg = resolve(cfg, overrides)
    cfg.validate()
    return cfg


def _resolve_nuplan(cfg: IngestConfig, overrides: dict[str, Any]) -> IngestConfig:
    """Find the log DBs and sensor roots (config, else NUPLAN_DB / NUPLAN_SENSOR_ROOT / NUPLAN_DATA_ROOT),
    keep the first ``episodes`` logs when given (0 = all), and fix every log's split up front: 80/10/10
    by camera frame count over the whole dataset, so a log's split does not depend on its block."""
    source = resolve_source(cfg.source, os.environ)
    wanted = overrides.get("episodes", 0)  # the preset's 0 = every log
    if wanted < 0:
        raise ValueError(f"episodes must be >= 0 for nuplan (the number of logs, 0 = all), got {wanted}")
    if wanted > len(source.db_paths):
        raise ValueError(
            f"episodes={wanted} but only {len(source.db_paths)} nuPlan logs were found "
            f"(first: {source.db_paths[0]}); use episodes=0 (or leave it out) for all of them"
        )
    if wanted:
        source = replace(source, db_paths=source.db_paths[:wanted])
    frames = count_frames_per_log(source)  # logs without camera images count 0 and are skipped later
    splits = assign_splits(frames, cfg.seed, -1)
    return replace(cfg, source=source, episodes=len(source.db_paths), unit_splits=tuple(splits))


def _resolve_procgen(cfg: IngestConfig, overrides: dict[str, Any]) -> IngestConfig:
    """A policy checkpoint is named by its file, not by a link such as ``ckpt/latest`` that moves while the
    expert trains: the resolved path goes into the dataset's config (and manifest), so a rerun with a
    retrained expert is a different dataset, refused rather than mixed."""
    policy = cfg.source.policy
    if policy == "mixed":
        expert = str(Path(cfg.source.expert).resolve(strict=True))
        return replace(cfg, source=replace(cfg.source, expert=expert))
    if policy in POLICIES:
        return cfg
    return replace(cfg, source=replace(cfg.source, policy=str(Path(policy).resolve(strict=True))))


# Per source kind: fill in what only the data on disk can tell (log lists, unit sizes, fixed splits,
# policy checkpoints). Called by build_config with the resolved config and the user's top-level overrides.
RESOLVERS: dict[str, Callable[[IngestConfig, dict[str, Any]], IngestConfig]] = {
    "nuplan": _resolve_nuplan,
    "procgen": _resolve_procgen,
}


__all__ = ["DATASETS", "IngestConfig", "RunOptions", "build_config", "preset"]
