"""Policies from their checkpoints: the RL expert (``train/expert.py``) and the BC policies
(``train/bc.py``) are rebuilt from the header inside their checkpoint, never from flags.

Every policy checkpoint holds ``policy``: {kind, arch, net_config, num_actions, in_frames, game,
distribution_mode, use_backgrounds}, next to the weights in ``model``. The network it rebuilds acts on
uint8 observations [B, 64, 64, 3] and returns logits [B, A].
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.policy import ActorCritic, PolicyNet, PolicyNetConfig
from shards.config import from_dict
from shards.tokens import file_id
from train.common import load_checkpoint

POLICY_KINDS = ("expert", "bc")


def policy_header(
    kind: str, net: nn.Module, game: str, distribution_mode: str, use_backgrounds: bool
) -> dict[str, Any]:
    """What a policy checkpoint records about its network and the env it was trained for."""
    from shards.config import to_dict

    return {
        "kind": kind,
        "arch": getattr(net, "arch", ""),
        "net_config": to_dict(net.cfg),
        "num_actions": int(net.num_actions),
        "in_frames": int(getattr(net, "in_frames", 1)),
        "game": game,
        "distribution_mode": distribution_mode,
        "use_backgrounds": bool(use_backgrounds),
    }


def build_policy_net(header: dict[str, Any]) -> nn.Module:
    """The network a header describes (untrained)."""
    cfg = from_dict(PolicyNetConfig, header["net_config"])
    if header["kind"] == "expert":
        return ActorCritic(cfg, header["num_actions"], header["arch"])
    return PolicyNet(cfg, header["num_actions"], header.get("in_frames", 1))


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch single-threaded inside the block (same float sums on every machine; no oversubscription
    when many processes each run a small network)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class LoadedPolicy:
    """A frozen policy network with what its checkpoint says about it."""

    net: nn.Module
    header: dict[str, Any]
    path: Path
    id: str  # content hash of the checkpoint file

    @property
    def game(self) -> str:
        return self.header["game"]

    def check_env(self, game: str, distribution_mode: str, use_backgrounds: bool, num_actions: int) -> None:
        """Refuse to act in an env whose observations or actions differ from the ones it was trained on."""
        h = self.header
        wanted = (h["game"], h["distribution_mode"], h["use_backgrounds"], h["num_actions"])
        if wanted != (game, distribution_mode, use_backgrounds, num_actions):
            raise ValueError(
                f"policy {self.path} was trained on {h['game']} ({h['distribution_mode']}, backgrounds "
                f"{h['use_backgrounds']}, {h['num_actions']} actions), not on {game} ({distribution_mode}, "
                f"backgrounds {use_backgrounds}, {num_actions} actions): use a policy of this game and mode"
            )

    @torch.no_grad()
    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 64, 64, 3] on the network's device -> float logits [B, A]."""
        return self.net.logits(obs).float()

    def probs_one_thread(self, obs: np.ndarray) -> np.ndarray:
        """uint8 [B, 64, 64, 3] (numpy, CPU) -> action probabilities float64 [B, A], single-threaded."""
        with one_thread():
            logits = self.logits(torch.from_numpy(np.ascontiguousarray(obs)))
        return torch.softmax(logits.double(), dim=-1).numpy()


def load_policy(path: str | Path, device: str | torch.device = "cpu") -> LoadedPolicy:
    """Rebuild the policy of a checkpoint written by train/expert.py or train/bc.py, in eval mode."""
    path = Path(path)
    state = load_checkpoint(path, map_location="cpu")
    header = state.get("policy")
    if not isinstance(header, dict) or header.get("kind") not in POLICY_KINDS:
        raise ValueError(
            f"{path} is not a policy checkpoint (no policy header of kind {POLICY_KINDS}): give an expert "
            "checkpoint (runs/expert-<game>/ckpt/latest) or a BC policy's"
        )
    net = build_policy_net(header)
    net.load_state_dict(state["model"])
    return LoadedPolicy(net.to(device).eval().requires_grad_(False), header, path, file_id(path))


@functools.lru_cache(maxsize=4)
def load_policy_cached(path: str) -> LoadedPolicy:
    """``load_policy`` once per process and path (ingest workers play many episodes with one network;
    the resolved ingest config names the checkpoint file itself, not the moving ``latest`` link)."""
    return load_policy(path)
