"""Planning (train/planner.py, train/plan.py): the exhaustive search finds the optimum on a toy world model
with a known answer (and CEM finds it too), planning with the true dynamics (the simulator) solves the easy
variant, and the benchmark writes every row, deterministically per seed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from model.fsq import FSQ
from train import plan
from train.common import load_tokenizer
from train.planner import (
    ModelImagination,
    Observation,
    SearchSettings,
    SimulatorImagination,
    all_sequences,
    search,
)

GRID = 5
MOVES = [(-1, 0), (1, 0), (0, -1), (0, 1)]  # up, down, left, right

pytestmark = pytest.mark.usefixtures("seeded_one_thread")


def sprite_at(y: int, x: int) -> torch.Tensor:
    f = torch.full((GRID, GRID, 5), -0.5)
    f[y, x] = 0.5
    return f.flatten(0, 1)


class GridWorld(nn.Module):
    """A toy world model: one sprite on a GRID x GRID token map (no wrap: walls), moved by the action token
    of the controlled agent (agent 0; four moves)."""

    factored, latent = False, "actions"

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))

    def action_tokens(self, full: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(full[..., 0], 4).float()[:, :, None]  # [C, H, 1, 4]

    def rollout(self, first, actions, snap=None, steps=None):
        f = first[:, -1].unflatten(1, (GRID, GRID))  # [C, h, w, F]
        pos = (f[..., 0] > 0).flatten(1).float().argmax(1)
        y, x = pos // GRID, pos % GRID
        out = []
        for i in range(actions.shape[1]):
            move = torch.tensor(MOVES)[actions[:, i, 0].argmax(-1)]
            y, x = (y + move[:, 0]).clamp(0, GRID - 1), (x + move[:, 1]).clamp(0, GRID - 1)
            out.append(torch.stack([sprite_at(int(a), int(b)) for a, b in zip(y, x, strict=True)]))
        return torch.stack(out, 1)


def toy_imagination() -> ModelImagination:
    from train.planner import world_model_steer

    model = GridWorld()
    imag = ModelImagination(model, FSQ([4] * 5), world_model_steer(model), actions=[0, 1, 2, 3], noop=0)
    start, goal = sprite_at(2, 1), sprite_at(1, 3)
    none = np.zeros((1, 2), dtype=np.int64)
    imag.observe(Observation(start[None], none, np.zeros(1, dtype=np.int64), goal, none, none[:, 0]))
    return imag


def test_exhaustive_search_finds_the_known_optimum_and_cem_too():
    """From (2, 1) to (1, 3) takes three moves (one up, two right) in any order. Every frame off the goal
    costs the same (the sprite on a wrong token, the goal token empty), the goal frame costs 0, so the mean
    cost over a horizon of 3 is lowest, and equal, for exactly those three orders; the exhaustive search
    takes the lexicographically first, [up, right, right]."""
    imag = toy_imagination()
    seqs = all_sequences(4, 3)
    costs = imag.costs(seqs)
    reach = {tuple(s) for s in seqs.tolist() if sorted(s) == [0, 3, 3]}
    best = costs.min()
    assert {tuple(s) for s in seqs[costs == best].tolist()} == reach
    out = search(imag.costs, 4, 3, SearchSettings(max_exhaustive=64), torch.Generator().manual_seed(0))
    assert out["method"] == "exhaustive" and out["sequence"].tolist() == [0, 3, 3]
    cem = search(
        imag.costs, 4, 3, SearchSettings(max_exhaustive=1, samples=32), torch.Generator().manual_seed(0)
    )
    assert cem["method"] == "cem" and tuple(cem["sequence"].tolist()) in reach
    again = search(
        imag.costs, 4, 3, SearchSettings(max_exhaustive=1, samples=32), torch.Generator().manual_seed(0)
    )
    assert again["sequence"].tolist() == cem["sequence"].tolist()


def test_cem_refines_towards_an_optimum_random_draws_miss():
    """A separable cost (positions that differ from one target sequence, 4^8 = 65,536 sequences): six CEM
    rounds of 64 draws find the target for every seed, where the same 384 draws from the uniform
    distribution (one round) do not come close. (On the toy world above a lucky draw would do.)"""
    target = torch.tensor([3, 1, 0, 2, 2, 1, 3, 0])

    def mismatches(seqs: torch.Tensor) -> torch.Tensor:
        return (seqs != target).sum(1).float()

    cem = SearchSettings(max_exhaustive=1, samples=64, iters=6, elites=8)
    once = SearchSettings(max_exhaustive=1, samples=384, iters=1, elites=8)
    for seed in range(3):
        found = search(mismatches, 4, 8, cem, torch.Generator().manual_seed(seed))
        assert found["sequence"].tolist() == target.tolist() and found["evaluated"] == 384
        assert search(mismatches, 4, 8, once, torch.Generator().manual_seed(seed))["cost"] >= 1


def small_task(small_world) -> plan.Task:
    ckpt, runs = small_world
    cfg = plan.run_config(runs["flam"])
    tokenizer, _ = load_tokenizer(ckpt, torch.device("cpu"))
    return plan.Task(
        plan.multigrid_source(cfg, 20),
        tokenizer,
        FSQ(tokenizer.cfg.levels),
        [0, 1, 2, 6],
        6,
        SearchSettings(),
        cfg,
        torch.device("cpu"),
    )


def test_planning_with_the_true_dynamics_solves_the_easy_variant(small_world):
    from ingest.multigrid import Room

    task = small_task(small_world)
    oracle = plan.Row(
        "oracle",
        lambda seed: SimulatorImagination(Room(task.source, seed), task.tokenizer, task.fsq, task.actions, 6),
    )
    for e in range(4):
        ep = plan.run_episode(task, oracle, plan.EPISODE_SEED + e, 2, "still", record=False)
        assert ep["success"] and ep["distance"] == 0 and ep["steps"] <= 2
    # and the goal is not where the agent starts
    positions, directions, _ = plan.make_goal(task, plan.EPISODE_SEED, 2, "still")
    start = Room(task.source, plan.EPISODE_SEED).poses()
    assert not plan.same_pose(positions, directions, *start, 0)


def test_benchmark_writes_every_row_deterministically(small_world, tmp_path):
    _, runs = small_world
    args = [
        "plan.episodes=1",
        "plan.seeds=[0,1]",
        "plan.moves=[1,2]",
        "plan.max_exhaustive=4",  # k=1: exhaustive; k=2: CEM
        "plan.cem_samples=8",
        "plan.cem_iters=2",
        "plan.cem_elites=2",
        "plan.labels=[20,40]",
        "controller.steps=3",
        "controller.val_windows=1",
    ]
    order = [str(runs[m]) for m in ("world_model", "flam", "genie")]
    first = plan.main(order, [*args, f"plan.out={tmp_path / 'a'}"])
    second = plan.main(order, [*args, f"plan.out={tmp_path / 'b'}"])
    a, b = (json.loads((d / "scores.json").read_text()) for d in (first, second))
    assert a["search"] == {
        "still-k1": "exhaustive",
        "still-k2": "cem",
        "moving-k1": "exhaustive",
        "moving-k2": "cem",
    }
    for key, rows in a["results"].items():
        for row, r in rows.items():
            for name in ("success", "success_per_seed", "distance", "steps"):
                assert r[name] == b["results"][key][row][name], (key, row, name)
    names = list(a["results"]["still-k1"])
    assert names == [
        "Oracle (simulator)",
        "World Model (true actions)",
        "FLAM + controller (0.02k)",
        "FLAM + controller (0.04k)",
        "FLAM + controller (0.04k), slot cost",
        "Genie + controller (0.04k)",
        "Random",
    ]
    text = (first / "plan.md").read_text()
    assert all(f"| {n} |" in text for n in names)
    assert (first / "plan.png").exists() and len(list((first / "videos").glob("*.gif"))) == 4
    with pytest.raises(ValueError, match=r"plan\.\*, controller\.\* and data\.root only"):
        plan.main(order, ["lam.beta=1"])
