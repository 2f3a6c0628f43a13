"""Planning with a world model: batched search over action sequences of one controlled agent, scored by
imagined rollouts (``train/plan.py`` runs the MultiGrid benchmark on top of this).

Axes: C candidate sequences, H horizon, n actions of the controlled agent, M agents, K slots, N tokens, F
FSQ width, D width.

- Search (``search``): exhaustive enumeration of all n^H sequences when that is at most
  ``max_exhaustive`` (exact and deterministic: ties go to the lexicographically first), else categorical CEM:
  per-step categorical distributions, ``samples`` sequences drawn from them, the ``elites`` cheapest
  refit them (mixed with the old distribution), ``iters`` rounds; the cheapest sequence ever scored wins.
- Cost of a sequence (``Imagination.costs``): the mean over the H imagined frames of the L2 distance to the
  goal, in FSQ-feature space (mean over N, F), or for a factored model optionally between the controlled
  agent's slot in the imagined frame and the goal frame's slot of that agent (``slot_cost``). The mean over
  the horizon rewards reaching the goal early and staying; MPC executes the first action and replans.
- Imaginations: ``ModelImagination`` rolls out every candidate in one batched ``model.rollout`` (no
  per-candidate Python loop), driven by real actions (World Model: action tokens) or by a controller's
  latents (``train/controller.py``); ``SimulatorImagination`` (the oracle) steps the real simulator over the
  distinct (pose, action) pairs of the candidates and renders and tokenizes the distinct poses, so its cost
  is the same feature-space cost with perfect dynamics.

The other agents are assumed to take ``done`` (stand still) in every imagination: the planner does not
know what they will do.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from train.eval.agent_slots import match_to_slots


@dataclass(frozen=True)
class SearchSettings:
    max_exhaustive: int = 256
    samples: int = 128
    iters: int = 3
    elites: int = 16
    momentum: float = 0.7  # weight of the elites' frequencies in each CEM refit


def all_sequences(n: int, horizon: int, device=None) -> torch.Tensor:
    """Every sequence of ``horizon`` choices among ``n``, lexicographic: int64 [n^H, H]."""
    seqs = list(itertools.product(range(n), repeat=horizon))
    return torch.tensor(seqs, dtype=torch.long, device=device).reshape(len(seqs), horizon)


def search(costs_fn, n: int, horizon: int, settings: SearchSettings, gen: torch.Generator) -> dict:
    """costs_fn(sequences int [C, H]) -> costs [C]. -> {"sequence" [H], "cost", "evaluated", "method"}."""
    if n**horizon <= settings.max_exhaustive:
        seqs = all_sequences(n, horizon)
        costs = costs_fn(seqs).cpu()
        best = int(torch.argmin(costs))  # first minimum: lexicographic tie-break
        return {
            "sequence": seqs[best],
            "cost": float(costs[best]),
            "evaluated": len(seqs),
            "method": "exhaustive",
        }
    probs = torch.full((horizon, n), 1.0 / n)
    best_seq, best_cost = None, float("inf")
    for _ in range(settings.iters):
        seqs = torch.multinomial(probs, settings.samples, replacement=True, generator=gen).T  # [S, H]
        costs = costs_fn(seqs).cpu()
        i = int(torch.argmin(costs))
        if float(costs[i]) < best_cost:
            best_cost, best_seq = float(costs[i]), seqs[i]
        elite = seqs[torch.argsort(costs, stable=True)[: settings.elites]]  # [E, H]
        freq = torch.nn.functional.one_hot(elite, n).float().mean(0)  # [H, n]
        probs = settings.momentum * freq + (1 - settings.momentum) * probs
    return {
        "sequence": best_seq,
        "cost": best_cost,
        "evaluated": settings.samples * settings.iters,
        "method": "cem",
    }


@dataclass
class Observation:
    """What the planner knows at a step: the last context frames' features [c, N, F], every agent's pose
    (positions [M, 2], directions [M]) in the current frame, and the goal: its features [N, F] and poses."""

    history: torch.Tensor
    positions: np.ndarray
    directions: np.ndarray
    goal: torch.Tensor
    goal_positions: np.ndarray
    goal_directions: np.ndarray


class ModelImagination:
    """Candidates imagined by a world model.

    ``steer(seqs [C, H] of full actions int [C, H, M], obs) -> actions`` for ``model.rollout``: a tensor
    [C, H, K', A'] or a function of (step, state) (a controller that reads the state). ``agent``: the
    controlled agent; ``actions``: its action indices (into the dataset's action space) for search choices;
    ``noop``: the action the other agents are assumed to take."""

    def __init__(
        self,
        model,
        fsq,
        steer,
        actions: list[int],
        noop: int,
        agent: int = 0,
        slot_cost: bool = False,
        cells: tuple[int, int] | None = None,
        tokens: tuple[int, int] | None = None,
        max_batch: int = 0,
    ) -> None:
        if slot_cost and not (model.factored and cells is not None):
            raise ValueError("the per-slot cost needs a factored model and a grid to match agents on")
        self.model, self.fsq, self.steer = model, fsq, steer
        self.actions, self.noop, self.agent = torch.tensor(actions), noop, agent
        self.slot_cost, self.cells, self.tokens, self.max_batch = slot_cost, cells, tokens, max_batch
        self.device = next(model.parameters()).device
        self.obs: Observation | None = None
        self.agent_slots: torch.Tensor | None = None  # [M] slot of each agent in the current frame
        self.goal_slot: torch.Tensor | None = None  # [D] the controlled agent's slot value in the goal frame

    @torch.no_grad()
    def observe(self, obs: Observation) -> None:
        self.obs = obs
        if not (self.slot_cost or getattr(self.steer, "per_agent", False)):
            return
        hist = obs.history.to(self.device)[None]  # [1, c, N, F]
        attn = self.model.slot_attention(hist)[:, -1:]  # [1, 1, K, N]
        pos = torch.from_numpy(obs.positions)[None, None]
        self.agent_slots = match_to_slots(attn, pos.to(self.device), self.cells, self.tokens)[0, 0]
        if self.slot_cost:
            window = torch.cat([hist, obs.goal.to(self.device)[None, None]], 1)[
                :, -self.model.cfg.max_frames :
            ]
            goal_attn = self.model.slot_attention(window)[:, -1:]
            goal_pos = torch.from_numpy(obs.goal_positions)[None, None].to(self.device)
            g = match_to_slots(goal_attn, goal_pos, self.cells, self.tokens)[0, 0, self.agent]
            self.goal_slot = self.model.states(window)[0, -1, g]

    def full_actions(self, seqs: torch.Tensor) -> torch.Tensor:
        """Search choices [C, H] -> every agent's action int [C, H, M] (the others: ``noop``)."""
        m = len(self.obs.positions)
        out = torch.full((*seqs.shape, m), self.noop, dtype=torch.long)
        out[..., self.agent] = self.actions[seqs]
        return out.to(self.device)

    @torch.no_grad()
    def costs(self, seqs: torch.Tensor) -> torch.Tensor:
        """seqs int [C, H] -> costs [C] (see the module docstring); batched, ``max_batch`` at a time."""
        size = self.max_batch or len(seqs)
        return torch.cat([self._costs(seqs[lo : lo + size]) for lo in range(0, len(seqs), size)])

    def _costs(self, seqs: torch.Tensor) -> torch.Tensor:
        c, h = seqs.shape
        full = self.full_actions(seqs)
        hist = self.obs.history.to(self.device)[None].expand(c, -1, -1, -1)
        drive = self.steer(full, self)
        states: list[torch.Tensor] = []
        if self.slot_cost:  # capture every imagined frame's slots (the state before each step)
            inner = drive if callable(drive) else (lambda i, state, fixed=drive: fixed[:, i])

            def drive(i, state, inner=inner):
                states.append(state)
                return inner(i, state)

        pred = self.model.rollout(hist, drive, snap=self.fsq.snap, steps=h)  # [C, H, N, F]
        if not self.slot_cost:
            goal = self.obs.goal.to(self.device)
            return (pred - goal).square().mean(dim=(2, 3)).mean(1)
        window = torch.cat([hist, pred], 1)[:, -self.model.cfg.max_frames :]
        states = [*states[1:], self.model.states(window)[:, -1]]  # frames 1..H (state i = frame i)
        k = self.agent_slots[self.agent]
        mine = torch.stack([s[:, k] for s in states], 1)  # [C, H, D]
        return (mine - self.goal_slot).square().mean(-1).mean(1)


def world_model_steer(model):
    """World Model: real actions -> action tokens [C, H, 1, A] (every agent's action, joint code)."""

    def steer(full, imagination):
        return model.action_tokens(full)

    return steer


def controller_steer(bound):
    """A latent-action model: real actions -> the controller's latents at every step, reading the state
    there (adapter); per-agent controllers fill each agent's matched slot (slots no agent holds get the
    controller's ``noop`` latent). Candidates that share their actions up to step i share the state there
    and the latent: the controller runs once per distinct prefix (exact; the rollout itself stays one batch
    of every candidate)."""

    def steer(full, imagination):
        slots = imagination.agent_slots
        k = bound.spec["latents"]

        def latents(acts, state):
            c = state.shape[0]
            if not bound.spec["per_agent"]:
                return bound.latents(acts, state)
            sigma = slots[None].expand(c, -1)
            rest = None
            if k > sigma.shape[1]:
                every = torch.arange(k, device=state.device)[None].expand(c, -1)
                rest = bound.latents(torch.full_like(every, imagination.noop), state, every)
            return bound.latents(acts, state, sigma, rest)

        def drive(i, state):
            first, inverse = distinct_rows(full[:, : i + 1].flatten(1))
            return latents(full[first, i], state[first])[inverse]

        return drive

    steer.per_agent = bound.spec["per_agent"]
    return steer


def distinct_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [C, L] -> (index of the first row of each distinct value [U], the distinct row of each row [C])."""
    _, inverse = torch.unique(x, dim=0, return_inverse=True)
    rows = torch.arange(len(x), device=x.device)
    first = torch.full((int(inverse.max()) + 1,), len(x), device=x.device)
    first = first.scatter_reduce(0, inverse, rows, reduce="amin")
    return first, inverse


class SimulatorImagination:
    """The oracle: candidates imagined by the simulator itself (another ``Room`` of the same episode, with
    the other agents standing still), frames rendered and tokenized, the same feature-space cost.

    Only distinct (pose, action) pairs are stepped and distinct poses rendered: candidates share prefixes,
    and the controlled agent's poses in a room are few."""

    def __init__(self, room, tokenizer, fsq, actions: list[int], noop: int, agent: int = 0) -> None:
        self.room, self.tokenizer, self.fsq = room, tokenizer, fsq
        self.actions, self.noop, self.agent = np.asarray(actions), noop, agent
        self.device = next(tokenizer.parameters()).device
        self.obs: Observation | None = None

    def observe(self, obs: Observation) -> None:
        self.obs = obs

    def _step(self, pose: tuple[int, int, int], action: int) -> tuple[int, int, int]:
        positions, directions = self.obs.positions.copy(), self.obs.directions.copy()
        positions[self.agent], directions[self.agent] = pose[:2], pose[2]
        self.room.set_poses(positions, directions)
        acts = np.full(len(positions), self.noop)
        acts[self.agent] = action
        self.room.step(acts)
        pos, dirs = self.room.poses()
        return int(pos[self.agent][0]), int(pos[self.agent][1]), int(dirs[self.agent])

    @torch.no_grad()
    def costs(self, seqs: torch.Tensor) -> torch.Tensor:
        from model.tokenizer import to_float

        seqs = seqs.cpu().numpy()
        c, h = seqs.shape
        start = (*self.obs.positions[self.agent].tolist(), int(self.obs.directions[self.agent]))
        poses = [start]  # distinct poses; index = pose id
        ids = {start: 0}
        node = np.zeros(c, dtype=np.int64)  # each candidate's pose id
        path = np.zeros((c, h), dtype=np.int64)
        for d in range(h):
            pairs, inverse = np.unique(np.stack([node, seqs[:, d]], 1), axis=0, return_inverse=True)
            nxt = []
            for pose_id, choice in pairs:  # distinct (pose, action) pairs only
                pose = self._step(poses[pose_id], int(self.actions[choice]))
                if pose not in ids:
                    ids[pose] = len(poses)
                    poses.append(pose)
                nxt.append(ids[pose])
            node = np.asarray(nxt)[inverse.reshape(-1)]
            path[:, d] = node
        positions = np.repeat(self.obs.positions[None], len(poses), 0)
        directions = np.repeat(self.obs.directions[None], len(poses), 0)
        positions[:, self.agent] = [p[:2] for p in poses]
        directions[:, self.agent] = [p[2] for p in poses]
        frames = torch.from_numpy(self.room.render(positions, directions))
        codes = self.tokenizer.encode(to_float(frames[None]).to(self.device))[0]  # [U, h, w]
        feats = self.fsq.indices_to_codes(codes).flatten(1, 2)  # [U, N, F]
        dist = (feats - self.obs.goal.to(feats.device)).square().mean(dim=(1, 2)).cpu()  # [U]
        return dist[torch.from_numpy(path)].mean(1)
