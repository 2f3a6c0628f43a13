"""Planning benchmark: MultiGrid goal reaching with each world model (paper 003's planning with a controller).

    python -m train.plan --config configs/multigrid.yaml --brief      # CPU size: models, controllers, plan
    python -m train.plan --runs runs/flam-multigrid runs/world_model-multigrid runs/genie-multigrid
    make plan DATASET=multigrid RUNS="runs/flam-multigrid runs/world_model-multigrid" ARGS="plan.episodes=100"

Task: one controlled agent (``plan.agent``) of a MultiGrid room from the dataset's own simulator settings
(``ingest/multigrid.py:Room``, an unseen start state per episode); the goal frame is the room after the
agent made k random moves (left / right / forward; ``plan.moves``): variant ``still`` (A) with the other
agents standing still, ``moving`` (B) with the other agents walking at random as in the data (their goal-
frame places are then unrelated to where they will be). Success: the controlled agent reaches the goal
cell with the goal heading within ``max_steps`` (2k) steps.

MPC: every step the planner observes the real frame (tokenized), searches action sequences of horizon H
(= k) for the controlled agent (``train/planner.py``: exhaustive when 4^H <= plan.max_exhaustive, else
categorical CEM), executes the first action in the simulator and replans. The other agents are assumed to
stand still in every imagination.

Rows: the oracle (the simulator as world model, same cost), World Model (true actions), every latent-action
run with a controller (``train/controller.py``, trained here when missing or stale): factored runs one per
label count of ``plan.labels`` and the per-slot cost (the controlled agent's matched slot) at the most
labels, scene-latent runs (Genie, AdaWorld) at the most labels; and random actions.
Metrics over ``plan.episodes`` x ``plan.seeds``: success rate (mean +- std over seeds), final distance (cells,
Manhattan), steps, planning milliseconds per step. All rows see the same episodes (start, goal, others'
random draws). Writes ``<out>/scores.json``, ``plan.md``, ``plan.png`` and ``videos/``.

Without ``--runs`` the models come from ``make compare``'s folder for the dataset (``runs/compare-<dataset>
[-brief]``), trained there first when missing: World Model, FLAM, Genie, AdaWorld.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model.fsq import FSQ
from model.latents import FAMILIES
from shards.config import merge, parse_overrides, split_overrides, to_dict
from shards.files import exclusive
from shards.manifest import load_manifest
from shards.tokens import file_id
from train import compare
from train import controller as controllers
from train.common import load_checkpoint, load_tokenizer, load_world_model
from train.config import Config, load_config, upgrade_config_dict
from train.eval.agent_slots import grid_cells
from train.planner import (
    ModelImagination,
    Observation,
    SearchSettings,
    SimulatorImagination,
    controller_steer,
    search,
    world_model_steer,
)

PLAN_OVERRIDABLE = ("plan.", "controller.", "data.root=")
BRIEF_MODELS = ("world_model", "flam", "genie", "adaworld")
EPISODE_SEED = 50_000_000  # planning episodes start far from the ingested ones (seeds 0, 1, ...)


@dataclass
class Row:
    """One planner: ``make(room_seed)`` -> an imagination with ``observe``/``costs`` (None: random)."""

    name: str
    make: object = None
    run: str = ""
    info: dict = field(default_factory=dict)


@dataclass
class Task:
    """Everything an episode needs besides the row."""

    source: object  # MultiGridConfig
    tokenizer: object
    fsq: FSQ
    actions: list[int]  # the controlled agent's choices (dataset action indices)
    noop: int
    settings: SearchSettings
    cfg: Config
    device: torch.device


def multigrid_source(cfg: Config, steps: int):
    """The dataset's MultiGrid settings (from its manifest), with a behaviour policy drawn for ``steps``."""
    from ingest.multigrid import MultiGridConfig

    config = load_manifest(cfg.dataset_dir)["config"]
    if config.get("source_kind") != "multigrid":
        raise ValueError(f"planning runs on MultiGrid; {cfg.data.dataset} is {config.get('source_kind')!r}")
    return MultiGridConfig(**{**config["source"], "episode_len": steps})


def encode(task: Task, frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> FSQ features [T, N, F]."""
    from model.tokenizer import to_float

    with torch.no_grad():
        codes = task.tokenizer.encode(to_float(torch.from_numpy(frames)[None]).to(task.device))[0]
        return task.fsq.indices_to_codes(codes).flatten(1, 2)


def make_goal(task: Task, seed: int, k: int, variant: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The goal of episode ``seed``: the room after the controlled agent's k random moves (left, right,
    forward; the others still, or walking on their own random stream) -> (positions, directions, frame).
    Draws again (up to 20 times) while the agent ends where it started."""
    from ingest.multigrid import ACTION_NAMES, Room

    agent = task.cfg.plan.agent
    moves = [ACTION_NAMES.index(a) for a in ("left", "right", "forward")]
    rng = np.random.default_rng([seed, k])
    for attempt in range(20):
        room = Room(task.source, seed, policy_seed=seed + 7919 * (attempt + 1))
        start = room.poses()
        for _ in range(k):
            acts = others_actions(room, variant, task.noop)
            acts[agent] = rng.choice(moves)
            room.step(acts)
        positions, directions = room.poses()
        if not same_pose(positions, directions, *start, agent):
            return positions, directions, room.frame()
    raise RuntimeError(f"episode {seed}: no goal away from the start in 20 draws of {k} moves")


def others_actions(room, variant: str, noop: int) -> np.ndarray:
    """Every agent's action this step: the behaviour policy's (``moving``) or ``noop`` (``still``)."""
    if variant == "moving":
        return room.behaviour_actions().copy()
    return np.full(room.cfg.num_agents, noop, dtype=np.int64)


def same_pose(positions, directions, goal_positions, goal_directions, agent: int) -> bool:
    return bool(
        (positions[agent] == goal_positions[agent]).all() and directions[agent] == goal_directions[agent]
    )


def run_episode(task: Task, row: Row, seed: int, k: int, variant: str, record: bool) -> dict:
    """One MPC episode -> {success, steps, distance, plan_seconds [per step], frames (when record)}."""
    from ingest.multigrid import Room

    pc = task.cfg.plan
    agent, horizon = pc.agent, pc.horizon or k
    goal_pos, goal_dir, goal_frame = make_goal(task, seed, k, variant)
    goal = encode(task, goal_frame[None])[0]
    room = Room(task.source, seed)
    imagination = row.make(seed) if row.make is not None else None
    rng = np.random.default_rng([seed, 17])
    history: list[torch.Tensor] = []
    frames, times = [room.frame()], []
    success = False
    for step in range(pc.max_steps or 2 * k):
        positions, directions = room.poses()
        history = [*history, encode(task, frames[-1][None])[0]][-pc.context :]
        if imagination is None:
            choice = int(rng.integers(len(task.actions)))
        else:
            start = time.perf_counter()
            imagination.observe(
                Observation(torch.stack(history), positions, directions, goal, goal_pos, goal_dir)
            )
            gen = torch.Generator().manual_seed(seed * 1000 + step)
            choice = int(
                search(imagination.costs, len(task.actions), horizon, task.settings, gen)["sequence"][0]
            )
            times.append(time.perf_counter() - start)
        acts = others_actions(room, variant, task.noop)
        acts[agent] = task.actions[choice]
        room.step(acts)
        frames.append(room.frame())
        positions, directions = room.poses()
        if same_pose(positions, directions, goal_pos, goal_dir, agent):
            success = True
            break
    distance = int(np.abs(positions[agent] - goal_pos[agent]).sum())
    out = {"success": success, "steps": len(frames) - 1, "distance": distance, "plan_seconds": times}
    if record:
        out["frames"], out["goal"] = np.stack(frames), goal_frame
    return out


def build_rows(runs: list[Path], task: Task, cells, tokens) -> list[Row]:
    """Oracle, World Model, every latent run x labels (+ per-slot cost), random; controllers trained here
    when missing or stale (``train/controller.py``)."""
    from ingest.multigrid import Room

    pc, device = task.cfg.plan, task.device
    rows = [
        Row(
            "Oracle (simulator)",
            lambda seed: SimulatorImagination(
                Room(task.source, seed), task.tokenizer, task.fsq, task.actions, task.noop, pc.agent
            ),
        )
    ]
    controller_args = [
        f"controller.{k}={v}"
        for k, v in to_dict(task.cfg.controller).items()
        if k not in ("kind", "labels", "out")
    ]
    for run in runs:
        model, config, step = load_world_model(run / "ckpt" / "latest", device)
        model.requires_grad_(False)
        name = _display(config["model"], model.latent)
        info = {
            "model": config["model"],
            "latent": model.latent,
            "step": step,
            "id": file_id(run / "ckpt" / "latest"),
        }

        def imagine(steer, slot_cost=False, model=model):
            return lambda seed: ModelImagination(
                model,
                task.fsq,
                steer,
                task.actions,
                task.noop,
                pc.agent,
                slot_cost=slot_cost,
                cells=cells,
                tokens=tokens,
                max_batch=pc.max_batch,
            )

        if model.latent == "actions":
            rows.append(Row(f"{name} (true actions)", imagine(world_model_steer(model)), str(run), info))
            continue
        if model.latent not in FAMILIES:
            print(f"plan: {run} ({config['model']}) has no actions to plan with: skipped")
            continue
        # The rows: FLAM (factored) with every label count, the scene-latent models with the most.
        for labels in pc.labels if model.factored else [max(pc.labels)]:
            args = [*controller_args, f"controller.kind={pc.controller}", f"controller.labels={labels}"]
            folder = controllers.main(run, [*args, f"data.root={task.cfg.data.root}"])
            bound = controllers.load_controller(folder, run, device, model=model)
            label = f"{name} + controller ({labels / 1000:g}k)"
            row_info = {**info, "controller": str(folder), "labels": labels}
            rows.append(Row(label, imagine(controller_steer(bound)), str(run), row_info))
            if pc.slot_cost and model.factored and cells is not None and labels == max(pc.labels):
                rows.append(
                    Row(f"{label}, slot cost", imagine(controller_steer(bound), True), str(run), row_info)
                )
    rows.append(Row("Random"))
    return rows


def _display(model: str, latent: str) -> str:
    from train.eval.report import DISPLAY

    name = DISPLAY.get(model, model)
    defaults = {"genie": "vq", "world_model": "actions"}
    return name if latent == defaults.get(model, "kl") else f"{name} ({latent})"


def run_config(run: Path) -> Config:
    """The resolved config inside a run's latest checkpoint (an older checkpoint's layout upgraded)."""
    return load_config(None, upgrade_config_dict(load_checkpoint(run / "ckpt" / "latest")["config"]))


def summarise(episodes: list[dict], seeds: int) -> dict:
    """Per-episode results (in seed-major order) -> success mean +- std over seeds, means of the rest."""
    per_seed = np.array([e["success"] for e in episodes], dtype=float).reshape(seeds, -1).mean(1)
    times = [t for e in episodes for t in e["plan_seconds"]]
    return {
        "success": float(per_seed.mean()),
        "success_std": float(per_seed.std()),
        "success_per_seed": per_seed.round(4).tolist(),
        "distance": float(np.mean([e["distance"] for e in episodes])),
        "steps": float(np.mean([e["steps"] for e in episodes])),
        "ms_per_step": float(np.mean(times) * 1000) if times else None,
        "episodes": len(episodes),
    }


def main(
    run_dirs: list[str], overrides: list[str], config: str | None = None, brief: bool = False, nproc: int = 1
) -> Path:
    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if run_dirs:
        refused = [o for o in overrides if not o.startswith(PLAN_OVERRIDABLE)]
        if refused:
            raise ValueError(
                f"with --runs, overrides may set plan.*, controller.* and data.root only, got {refused}"
            )
        runs = [Path(r) for r in run_dirs]
        first = to_dict(run_config(runs[0]))
        cfg = load_config(None, merge(first, parse_overrides(overrides)))
        out = Path(cfg.plan.out or f"runs/plan-{cfg.data.dataset}")
    else:
        if config is None:
            raise ValueError("give --runs, or --config to train the models first (make compare's folder)")
        cfg = compare.preset(config, overrides, brief)
        root = compare.compare_root(cfg.data.dataset, brief)
        cfg = compare.with_runs(cfg, root)
        compare.prepare(cfg, root, nproc)
        models = [compare.with_runs(cfg, root, m) for m in BRIEF_MODELS]
        print(f"== world models: {', '.join(BRIEF_MODELS)} (trained when missing)", flush=True)
        compare.train_models(models, root, nproc, jobs=2 if brief else 1)
        runs = [m.lam_run_dir for m in models]
        out = Path(cfg.plan.out or f"runs/plan-{cfg.data.dataset}{'-brief' if brief else ''}")
    with exclusive(out, "train/plan.py"):  # one writer per output folder
        return benchmark(runs, cfg, out, device, start)


def benchmark(runs: list[Path], cfg: Config, out: Path, device: torch.device, start: float) -> Path:
    """Rows, episodes, reports (see the module docstring) -> ``out``."""
    pc = cfg.plan
    tokenizers = {str(run_config(r).tokenizer_checkpoint) for r in runs}
    if len(tokenizers) > 1:
        raise ValueError(
            f"the runs use different tokenizers {sorted(tokenizers)}: plan with one dataset's runs"
        )
    from ingest.multigrid import ACTION_NAMES

    tokenizer, _ = load_tokenizer(cfg.tokenizer_checkpoint, device)
    task = Task(
        source=multigrid_source(cfg, 4 * max(pc.moves) + 1),
        tokenizer=tokenizer,
        fsq=FSQ(tokenizer.cfg.levels).to(device),
        actions=[ACTION_NAMES.index(a) for a in ("left", "right", "forward", "done")],
        noop=ACTION_NAMES.index("done"),
        settings=SearchSettings(pc.max_exhaustive, pc.cem_samples, pc.cem_iters, pc.cem_elites),
        cfg=cfg,
        device=device,
    )
    grid = tokenizer.cfg.grid_size
    rows = build_rows(runs, task, grid_cells(cfg.dataset_dir), (grid, grid))
    results, videos = {}, {}
    settings = [(v, k) for v in pc.variants for k in pc.moves]
    total = len(settings) * len(pc.seeds) * pc.episodes * len(rows)
    bar = tqdm(total=total, desc="plan episodes", dynamic_ncols=True)
    for variant, k in settings:
        key = f"{variant}-k{k}"
        results[key] = {}
        for row in rows:
            episodes = []
            for s, seed in enumerate(pc.seeds):
                for e in range(pc.episodes):
                    episode_seed = EPISODE_SEED + seed * 100_000 + e
                    record = s == 0 and e < pc.videos
                    ep = run_episode(task, row, episode_seed, k, variant, record)
                    if record:
                        columns = videos.setdefault(key, {"Goal": []})
                        columns.setdefault(row.name, []).append(ep.pop("frames"))
                        goal = ep.pop("goal")[None]
                        if len(columns["Goal"]) < len(columns[row.name]):
                            columns["Goal"].append(goal)
                    episodes.append(ep)
                    bar.update(1)
            results[key][row.name] = summarise(episodes, len(pc.seeds))
            bar.set_postfix_str(f"{key} {row.name}: {results[key][row.name]['success']:.2f}")
    bar.close()
    horizon = {f"{v}-k{k}": pc.horizon or k for v, k in settings}
    method = {h: ("exhaustive" if 4**h <= pc.max_exhaustive else "cem") for h in horizon.values()}
    scores = {
        "dataset": cfg.data.dataset,
        "tokenizer": str(cfg.tokenizer_checkpoint),
        "plan": to_dict(pc),
        "horizon": horizon,
        "search": {key: method[h] for key, h in horizon.items()},
        "rows": {r.name: {"run": r.run, **r.info} for r in rows},
        "results": results,
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_reports(scores, videos, out)
    return out


def write_reports(scores: dict, videos: dict, out: Path) -> None:
    from train import plan_report

    out.mkdir(parents=True, exist_ok=True)
    (out / "scores.json").write_text(json.dumps(scores, indent=1))
    text = plan_report.table(scores)
    (out / "plan.md").write_text(text)
    plan_report.plot(scores, out / "plan.png")
    for key, columns in videos.items():
        plan_report.episode_gif(columns, out / "videos" / f"{key}.gif")
    print(text)


def parse_cli(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="*", default=[], help="run folders of train/lam.py (one dataset)")
    p.add_argument("--config", help="a dataset preset: train the models in make compare's folder first")
    p.add_argument("--brief", action="store_true", help="CPU size (configs/brief.yaml) with --config")
    p.add_argument("--nproc", type=int, default=1, help="GPUs per training stage (with --config)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. plan.episodes=100 plan.labels=[1000]")
    args = p.parse_args(argv)
    args.runs, swept = split_overrides(args.runs)
    args.overrides = [*swept, *args.overrides]
    return args


if __name__ == "__main__":
    a = parse_cli()
    main(a.runs, a.overrides, a.config, a.brief, a.nproc)
