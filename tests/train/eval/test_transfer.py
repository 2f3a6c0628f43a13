"""Leakage and transfer tests of latent actions (train/eval/transfer.py): the scene-cut test flags a model
wired to see the future and passes an honest one, cycle consistency is lossless for latents that transfer,
per-slot moves follow the agent matching, and the tests run on a real FLAM with matched slots."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.config import LAMConfig
from model.flam import FLAM
from tests.helpers import random_walkers
from train.eval.transfer import (
    Windows,
    _move,
    cycle_consistency,
    pair_other_episodes,
    scene_cut,
    transfer_table,
    transfer_tests,
)

GRID = 5
SHIFTS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]

pytestmark = pytest.mark.usefixtures("seeded_one_thread")


def sprite_clips(num: int, t: int = 6, seed: int = 0) -> torch.Tensor:
    """One sprite per clip moving with a constant velocity (wrapping) on a GRID x GRID token map:
    features [num, t, GRID^2, 5]."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.full((num, t, GRID, GRID, 5), -0.5)
    for c in range(num):
        y, x = torch.randint(0, GRID, (2,), generator=gen).tolist()
        dy, dx = SHIFTS[int(torch.randint(0, 9, (1,), generator=gen))]
        for s in range(t):
            out[c, s, (y + s * dy) % GRID, (x + s * dx) % GRID] = 0.5
    return out.flatten(2, 3)


class ShiftModel:
    """Honest: the latent is which of the 9 shifts maps frame t onto frame t+1 (one-hot), and the rollout
    applies it. It carries the change an agent makes, nothing of the next frame's content."""

    latent, factored = "kl", False

    def infer_actions(self, features, actions=None):
        grid = features.unflatten(2, (GRID, GRID))  # [B, T, h, w, F]
        errs = torch.stack(
            [(grid[:, :-1].roll(s, dims=(2, 3)) - grid[:, 1:]).square().sum((2, 3, 4)) for s in SHIFTS], -1
        )
        return torch.nn.functional.one_hot(errs.argmin(-1), 9).float()[:, :, None]  # [B, T-1, 1, 9]

    def rollout(self, first, actions, snap=None, steps=None):
        f, out = first[:, -1].unflatten(1, (GRID, GRID)), []
        for i in range(actions.shape[1]):
            which = actions[:, i, 0].argmax(-1)
            f = torch.stack([f[b].roll(SHIFTS[int(k)], dims=(0, 1)) for b, k in enumerate(which)])
            out.append(f.flatten(1, 2))
        return torch.stack(out, 1)


class FutureModel(ShiftModel):
    """Wired to see the future: the latent is the next frame itself, and the rollout returns it."""

    def infer_actions(self, features, actions=None):
        return features[:, 1:].flatten(2)[:, :, None]  # [B, T-1, 1, N*F]

    def rollout(self, first, actions, snap=None, steps=None):
        return actions[:, :, 0].unflatten(-1, first.shape[2:])


def test_scene_cut_flags_a_model_that_sees_the_future_and_passes_an_honest_one():
    clips = sprite_clips(8)
    data = Windows(clips, np.arange(8), None)
    honest = transfer_tests(ShiftModel(), data, None, (GRID, GRID), 4, torch.device("cpu"))
    leaky = transfer_tests(FutureModel(), data, None, (GRID, GRID), 4, torch.device("cpu"))
    assert honest["scene_cut"]["normal_mse"] == 0 and honest["scene_cut"]["cut_mse"] > 0
    assert not honest["scene_cut"]["leaks"] and honest["scene_cut"]["ratio"] >= 2
    assert leaky["scene_cut"]["leaks"] and leaky["scene_cut"]["cut_mse"] == 0
    # the raw errors per window (a cut can happen to be one shift away: then that window's error is 0)
    errs = scene_cut(ShiftModel(), clips[:4], clips[4:], cut=3)
    assert errs["cut"].mean() > 0 and (errs["normal"] == 0).all() and (errs["copy"] > 0).all()
    table = transfer_table({"honest": honest, "leaky": leaky})
    assert "**leaks**" in table.splitlines()[-1] and "ok" in table.splitlines()[-2]


def test_cycle_consistency_is_lossless_for_latents_that_transfer():
    clips = sprite_clips(8, seed=1)
    out = cycle_consistency(ShiftModel(), clips[:4], clips[4:])
    assert (out["cycle"] == 0).all() and (out["direct"] == 0).all()
    scored = transfer_tests(ShiftModel(), Windows(clips, np.arange(8), None), None, (5, 5), 8, "cpu")
    assert scored["cycle"]["ratio"] == pytest.approx(1.0)


def test_per_slot_moves_follow_the_agents():
    dst = torch.zeros(1, 3, 2)
    src = torch.arange(6.0).reshape(1, 3, 2)
    # agent 0 sits in src slot 2 and dst slot 0, agent 1 in src slot 0 and dst slot 1; dst slot 2 keeps
    # its own latent
    moved = _move(dst, src, torch.tensor([[0, 1]]), torch.tensor([[2, 0]]))
    torch.testing.assert_close(moved, torch.tensor([[[4.0, 5.0], [0.0, 1.0], [0.0, 0.0]]]))


def test_pairs_come_from_other_episodes():
    partner = pair_other_episodes(np.array([0, 0, 1, 1, 2, 2]))
    assert [int(p) for p in partner] == [3, 4, 5, 0, 1, 2]
    assert all(e != f for e, f in zip([0, 0, 1, 1, 2, 2], np.array([0, 0, 1, 1, 2, 2])[partner], strict=True))
    with pytest.raises(ValueError, match="two episodes"):
        pair_other_episodes(np.array([3, 3, 3]))


def test_a_flam_is_scored_per_matched_slot():
    features, _, positions = random_walkers(6, t=4, grid=GRID, entities=3)
    xy = positions.flip(-1)  # (row, col) -> (x, y)
    cfg = LAMConfig(
        dim=18,
        num_heads=2,
        depth=1,
        num_slots=3,
        slot_iters=1,
        num_tokens=GRID**2,
        feature_dim=5,
        max_frames=4,
    )
    model = FLAM(cfg).eval()
    torch.nn.init.normal_(model.head.weight, std=0.5)
    out = transfer_tests(model, Windows(features, np.arange(6), xy), (GRID, GRID), (GRID, GRID), 3, "cpu")
    assert out["cycle"]["per_slot"] and out["windows"] == 6
    assert all(np.isfinite(v) for v in (out["cycle"]["ratio"], out["scene_cut"]["ratio"]))
