"""Train a controller from real actions to a trained world model's latent actions (paper 003).

    python -m train.controller --run runs/flam-multigrid controller.kind=adapter controller.labels=10000
    make controller RUN=runs/flam-multigrid ARGS="controller.kind=adapter controller.labels=10000"

The world model is rebuilt from its checkpoint (``<run>/ckpt/latest``, never from flags) and frozen. A
labelled subset of the train split's cached windows (the first ``controller.labels`` transitions of a
seeded order) gives pairs (real action, the IDM's latent action); the controller (``model/controller.py``:
``mlp`` or ``adapter``) learns them with an L2 loss.

- Factored models (FLAM, PlaySlot) on data with agent positions (MultiGrid): every agent j of a transition
  is a pair (agent j's action, the latent of the slot holding agent j), the slot found by slot-agent
  matching (``train/eval/agent_slots.py``); the adapter is told that slot (``focus``).
- Scene-latent models, and factored ones without positions (Procgen): one pair per transition, (every
  actor's action, the whole latent), the K' latents flattened.
The World Model takes real actions itself and has no controller.

Evaluation on the val split: the latent error against the IDM (and that of always predicting the mean
training latent), and rollouts driven by the controller's latents from the real actions next to rollouts
driven by the IDM's latents, both decoded and scored (PSNR) against the decoded ground-truth codes.

Writes ``<run>/controller/<kind>-<labels>/`` (``controller.out``): ckpt/ (the controller, its config and the
id of the world-model checkpoint it was fitted to: loading it against another checkpoint is refused),
scores.json, report.md, curve.csv.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model.controller import Controller
from model.fsq import FSQ
from model.latents import FAMILIES
from shards.config import merge, parse_overrides, to_dict
from shards.files import exclusive
from shards.tokens import TokenCache, cache_dir, file_id
from train.batches import TokenWindows
from train.common import Checkpoints, load_checkpoint, load_tokenizer, load_world_model, warmup_cosine
from train.config import Config, load_config
from train.eval.agent_slots import agent_slots, grid_cells
from train.eval.rollout import decode_tokens
from train.eval.scoring import Scorer

CONTROLLER_OVERRIDABLE = ("controller.", "data.root=")


@dataclass
class Examples:
    """Labelled pairs. Per transition n: ``state_src`` [n, S, *] (slots of a factored model, else the
    frame's features, embedded on the fly). Per example e: ``trans`` [E] (its transition), ``actions`` int
    [E, I] (the actors it reads), ``focus`` [E] (the acting slot) or None, ``target`` [E, O]."""

    state_src: torch.Tensor
    trans: torch.Tensor
    actions: torch.Tensor
    focus: torch.Tensor | None
    target: torch.Tensor

    def __len__(self) -> int:
        return len(self.trans)


class BoundController:
    """A controller bound to its frozen world model: real actions (+ state) -> the model's latent actions.

    ``spec`` (saved with the controller): per_agent, num_actions, actors, latents (K'), latent_dim (A)."""

    def __init__(self, net: Controller, model, spec: dict) -> None:
        self.net, self.model, self.spec = net, model, spec

    def one_hot(self, actions: torch.Tensor) -> torch.Tensor:
        """int [B, I] -> float [B, I * num_actions]."""
        return F.one_hot(actions.long(), self.spec["num_actions"]).flatten(1).float()

    def predict(self, actions: torch.Tensor, state: torch.Tensor, focus: torch.Tensor | None) -> torch.Tensor:
        """actions int [B, I], state [B, S, D] (the model's states), focus [B] or None -> outputs [B, O]."""
        return self.net(self.one_hot(actions), state if self.net.reads_state else None, focus)

    def latents(
        self,
        actions: torch.Tensor,
        state: torch.Tensor,
        agent_slots: torch.Tensor | None = None,
        rest: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One step's latent actions for a rollout: actions int [B, M] (every actor), state [B, S, D];
        per-agent controllers also take agent_slots int [B, M] (the slot of each agent) and rest [B, K, A]
        (the latents of slots no agent holds) -> [B, K', A], in the form the forward model was trained on
        (vq: the nearest codes)."""
        b = actions.shape[0]
        k, a = self.spec["latents"], self.spec["latent_dim"]
        if not self.spec["per_agent"]:
            return self.model.latent_head.snap(self.predict(actions, state, None).reshape(b, k, a))
        m = actions.shape[1]
        rep = torch.arange(b, device=actions.device).repeat_interleave(m)  # [B M]: example -> row
        out = self.predict(actions.reshape(-1, 1), state[rep], agent_slots.reshape(-1))  # [B M, A]
        out = self.model.latent_head.snap(out).reshape(b, m, a)
        base = rest.clone() if rest is not None else out.new_zeros(b, k, a)
        return base.scatter(1, agent_slots[..., None].expand(-1, -1, a), out)


def load_run(run: Path, overrides: list[str], device: torch.device):
    """(model, its Config with ``overrides`` of controller.* / data.root, world-model id)."""
    refused = [o for o in overrides if not o.startswith(CONTROLLER_OVERRIDABLE)]
    if refused:
        raise ValueError(
            f"controller overrides may set controller.* and data.root only, got {refused}: the world model "
            "is rebuilt from its checkpoint"
        )
    ckpt = run / "ckpt" / "latest"
    if not ckpt.exists():
        raise FileNotFoundError(f"{run} is not a run folder of train/lam.py (no ckpt/latest)")
    model, config, _ = load_world_model(ckpt, device)
    model.requires_grad_(False)
    cfg = load_config(None, merge(config, parse_overrides(overrides)))
    if model.latent not in FAMILIES:
        raise ValueError(
            f"{run} holds model={cfg.model}, driven by {model.latent!r}: a controller maps real actions to "
            "latent actions; the World Model takes real actions already"
        )
    if cfg.lam.num_actions < 1:
        raise ValueError(f"{run}: lam.num_actions is 0 ({cfg.data.dataset} has no actions to control with)")
    return model, cfg, file_id(ckpt)


def out_dir(run: Path, cfg: Config) -> Path:
    cc = cfg.controller
    return Path(cc.out) if cc.out else run / "controller" / f"{cc.kind}-{cc.labels}"


def spec_of(model, cfg: Config, per_agent: bool, out_dim: int) -> dict:
    """What a saved controller needs to be rebuilt and bound (states are lam.dim wide: slots or tokens)."""
    k = cfg.lam.num_slots if model.factored else 1
    return {
        "per_agent": per_agent,
        "num_actions": cfg.lam.num_actions,
        "actors": 1 if per_agent else cfg.lam.num_actors,
        "latents": k,
        "latent_dim": model.action_dim,
        "out_dim": out_dim,
        "state_dim": cfg.lam.dim,
    }


@torch.no_grad()
def collect(model, cfg: Config, windows: TokenWindows, picks: np.ndarray, limit: int, device) -> Examples:
    """Examples from the windows ``picks`` (in order) until ``limit`` transitions (see ``Examples``)."""
    fsq = FSQ(windows.cache.info.levels).to(device)
    cells = grid_cells(cfg.dataset_dir)
    tokens = tuple(windows.cache.info.grid)
    state_src, trans, acts, focus, target = [], [], [], [], []
    have = 0
    for lo in range(0, len(picks), 16):
        items = [windows[int(i)] for i in picks[lo : lo + 16]]
        f = fsq.indices_to_codes(torch.stack([it["codes"] for it in items]).to(device)).flatten(2, 3)
        actions = torch.stack([it["actions"] for it in items]).to(device)
        actions = actions.reshape(*actions.shape[:2], -1)[:, :-1]  # [w, L-1, M]: actions[t] moves t -> t+1
        z = model.infer_actions(f, actions)  # [w, L-1, K', A]
        w, n = z.shape[:2]
        per_agent = per_agent_mode(model, items[0], cells)
        if per_agent:
            positions = torch.stack([it["positions"] for it in items])
            sigma = agent_slots(model, f, positions, cells, tokens)[:, :-1]  # [w, L-1, M]
            state_src.append(model.states(f)[:, :-1].flatten(0, 1).cpu())
            m = sigma.shape[-1]
            idx = have + torch.arange(w * n).repeat_interleave(m)
            trans.append(idx)
            acts.append(actions.flatten(0, 1).reshape(-1, 1).cpu())
            focus.append(sigma.flatten().cpu())
            zz = z.flatten(0, 1)  # [w n, K, A]
            target.append(zz[torch.arange(w * n).repeat_interleave(m), sigma.flatten(0, 1).flatten()].cpu())
        else:
            state_src.append(f[:, :-1].flatten(0, 1).cpu())
            trans.append(have + torch.arange(w * n))
            acts.append(actions.flatten(0, 1).cpu())
            target.append(z.flatten(0, 1).flatten(1).cpu())
        have += w * n
        if have >= limit:
            break
    ex = Examples(
        torch.cat(state_src),
        torch.cat(trans),
        torch.cat(acts),
        torch.cat(focus) if focus else None,
        torch.cat(target),
    )
    keep = ex.trans < limit
    return Examples(
        ex.state_src[:limit],
        ex.trans[keep],
        ex.actions[keep],
        ex.focus[keep] if ex.focus is not None else None,
        ex.target[keep],
    )


def per_agent_mode(model, item: dict, cells) -> bool:
    """Per-agent pairs need a factored model, agent positions in the cache and a grid to match them on."""
    return bool(model.factored and "positions" in item and cells is not None)


def batch_states(model, ex: Examples, rows: torch.Tensor, factored: bool, device) -> torch.Tensor:
    """The world model's state for examples ``rows`` [b] -> [b, S, D]."""
    src = ex.state_src[ex.trans[rows]].to(device)
    return src if factored else model.states(src[:, None])[:, 0]


def fit(bound: BoundController, ex: Examples, cfg: Config, device, curve_path: Path) -> list[float]:
    """L2 regression of the controller onto ``ex.target``; writes the loss curve. -> the losses."""
    cc = cfg.controller
    net, model = bound.net, bound.model
    opt = torch.optim.AdamW(net.parameters(), lr=cc.lr, weight_decay=cc.weight_decay)
    warm = min(100, cc.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warm, cc.steps))
    gen = torch.Generator().manual_seed(cc.seed)
    losses, lines = [], ["step,loss"]
    factored = bound.spec["per_agent"]
    for step in tqdm(range(cc.steps), desc=f"controller {cc.kind}-{cc.labels}", dynamic_ncols=True):
        rows = torch.randint(len(ex), (min(cc.batch_size, len(ex)),), generator=gen)
        with torch.no_grad():
            state = batch_states(model, ex, rows, factored, device) if net.reads_state else None
        focus = ex.focus[rows].to(device) if ex.focus is not None else None
        pred = bound.net(bound.one_hot(ex.actions[rows].to(device)), state, focus)
        loss = (pred - ex.target[rows].to(device)).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 50 == 0 or step + 1 == cc.steps:
            lines.append(f"{step + 1},{np.mean(losses[-50:]):.6g}")
    curve_path.write_text("\n".join(lines) + "\n")
    return losses


@torch.no_grad()
def validate(
    bound: BoundController, cfg: Config, tokenizer_id: str, target_mean: torch.Tensor, device
) -> dict:
    """Val split: latent MSE (controller vs IDM; the mean-latent baseline) and rollout PSNR of controller-
    driven vs IDM-driven rollouts against the decoded ground-truth codes."""
    cc, model = cfg.controller, bound.model
    split = cache_dir(cfg.data.root, cfg.data.dataset, tokenizer_id, "val")
    if not (split / "index.json").exists() or not cc.val_windows:
        return {"skipped": f"no val token cache at {split}" if cc.val_windows else "controller.val_windows=0"}
    cache = TokenCache(split)
    length = cfg.lam_train.rollout_steps + 1
    windows = TokenWindows(cache, length, length)
    picks = np.unique(np.linspace(0, len(windows) - 1, min(cc.val_windows, len(windows))).round().astype(int))
    ex = collect(model, cfg, windows, picks, 10**9, device)
    factored = bound.spec["per_agent"]
    state = (
        batch_states(model, ex, torch.arange(len(ex)), factored, device) if bound.net.reads_state else None
    )
    pred = bound.net(
        bound.one_hot(ex.actions.to(device)), state, ex.focus.to(device) if ex.focus is not None else None
    )
    target = ex.target.to(device)
    tokenizer, _ = load_tokenizer(cfg.tokenizer_checkpoint, device)
    grid = tuple(cache.info.grid)
    cells = grid_cells(cfg.dataset_dir)
    scorer = Scorer(device)  # PSNR and SSIM, as every rollout is scored (train/eval/scoring.py)
    for lo in range(0, len(picks), 8):
        items = [windows[int(i)] for i in picks[lo : lo + 8]]
        codes = torch.stack([it["codes"] for it in items]).to(device)
        f = tokenizer.codes_to_features(codes).flatten(2, 3)  # [B, L, N, F]
        actions = torch.stack([it["actions"] for it in items]).to(device)
        actions = actions.reshape(*actions.shape[:2], -1)
        z = model.infer_actions(f, actions)
        sigma = None
        if factored:
            positions = torch.stack([it["positions"] for it in items])
            sigma = agent_slots(model, f, positions, cells, grid)

        def drive(i, state, actions=actions, sigma=sigma, z=z):
            slots = sigma[:, i] if sigma is not None else None
            return bound.latents(actions[:, i], state, slots, rest=z[:, i] if slots is not None else None)

        truth = decode_tokens(tokenizer, f[:, 1:]).cpu()
        for name, acts in (("idm", z), ("controller", drive)):
            rolled = model.rollout(f[:, :1], acts, snap=tokenizer.fsq.snap, steps=length - 1)
            scorer.add(name, decode_tokens(tokenizer, rolled).cpu(), truth)
    scores = scorer.summary()
    return {
        "val_examples": len(ex),
        "latent_mse": float((pred - target).square().mean()),
        "mean_latent_mse": float((target_mean.to(device) - target).square().mean()),
        "rollout_steps": length - 1,
        "rollout_psnr_idm": scores["idm"]["psnr"],
        "rollout_psnr_controller": scores["controller"]["psnr"],
    }


def build_controller(spec: dict, cc) -> Controller:
    return Controller(
        cc["kind"],
        spec["actors"] * spec["num_actions"],
        spec["out_dim"],
        spec["state_dim"],
        width=cc["width"],
        depth=cc["depth"],
        num_heads=cc["num_heads"],
    )


def load_controller(folder: str | Path, run: str | Path, device: torch.device, model=None) -> BoundController:
    """The controller in ``folder`` bound to the world model of ``run`` (loaded unless given); refused when
    it was fitted to another checkpoint of that run (stale)."""
    folder, run = Path(folder), Path(run)
    state = load_checkpoint(folder / "ckpt" / "latest")
    if state.get("kind") != "controller":
        raise ValueError(f"{folder} holds no controller (kind {state.get('kind')!r})")
    current = file_id(run / "ckpt" / "latest")
    if state["world_model_id"] != current:
        raise ValueError(
            f"controller {folder} was fitted to world-model checkpoint {state['world_model_id']}, {run} now "
            f"holds {current}: stale, retrain it (make controller RUN={run})"
        )
    if model is None:
        model, _, _ = load_world_model(run / "ckpt" / "latest", device)
        model.requires_grad_(False)
    net = build_controller(state["spec"], state["controller_config"])
    net.load_state_dict(state["model"])
    return BoundController(net.to(device).eval(), model, state["spec"])


def is_current(folder: Path, run: Path, cfg: Config) -> bool:
    """A controller in ``folder`` fitted to ``run``'s current checkpoint with these settings exists."""
    path = folder / "ckpt" / "latest"
    if not path.exists():
        return False
    state = load_checkpoint(path)
    same = {k: v for k, v in state.get("controller_config", {}).items() if k != "out"}
    want = {k: v for k, v in to_dict(cfg.controller).items() if k != "out"}
    return state.get("world_model_id") == file_id(run / "ckpt" / "latest") and same == want


def main(run: str | Path, overrides: list[str] | None = None) -> Path:
    """Train (or keep, when current) the controller of ``run`` -> its folder."""
    run = Path(run)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, cfg, world_id = load_run(run, list(overrides or []), device)
    folder = out_dir(run, cfg)
    with exclusive(folder, f"train/controller.py --run {run}"):  # one writer per controller folder
        if is_current(folder, run, cfg):
            print(f"controller {folder} is current for {run}: kept")
            return folder
        return fit_and_save(run, model, cfg, world_id, folder, device)


def fit_and_save(run: Path, model, cfg: Config, world_id: str, folder: Path, device) -> Path:
    """Collect the labelled pairs, fit, validate, save (see the module docstring) -> ``folder``."""
    cc = cfg.controller
    start = time.perf_counter()
    tokenizer_id = file_id(cfg.tokenizer_checkpoint)
    cache = TokenCache(cache_dir(cfg.data.root, cfg.data.dataset, tokenizer_id, "train"))
    windows = TokenWindows(cache, cfg.lam.max_frames, cfg.lam.max_frames)
    if "actions" not in windows[0]:
        raise ValueError(f"the {cfg.data.dataset} token cache holds no actions: no controller to learn")
    picks = np.random.default_rng(cc.seed).permutation(len(windows))
    torch.manual_seed(cc.seed)
    ex = collect(model, cfg, windows, picks, cc.labels, device)
    labels = int(ex.trans.max()) + 1
    if labels < cc.labels:
        print(
            f"warning: the train split holds {labels} transitions, fewer than controller.labels={cc.labels}"
        )
    per_agent = ex.focus is not None
    spec = spec_of(model, cfg, per_agent, ex.target.shape[1])
    bound = BoundController(build_controller(spec, to_dict(cc)).to(device), model, spec)
    folder.mkdir(parents=True, exist_ok=True)
    losses = fit(bound, ex, cfg, device, folder / "curve.csv")
    bound.net.eval()
    scores = {
        "run": str(run),
        "world_model_id": world_id,
        "model": cfg.model,
        "latent": model.latent,
        "kind": cc.kind,
        "labels": labels,
        "examples": len(ex),
        "per_agent": per_agent,
        "train_loss": float(np.mean(losses[-50:])),
        "val": validate(bound, cfg, tokenizer_id, ex.target.mean(0), device),
        "seconds": round(time.perf_counter() - start, 1),
    }
    ckpts = Checkpoints(folder, keep_last=1)
    ckpts.load_latest()  # allows pruning the replaced controller
    ckpts.save(
        {
            "model": bound.net.state_dict(),
            "kind": "controller",
            "spec": spec,
            "controller_config": to_dict(cc),
            "world_model_id": world_id,
            "run": str(run),
            "step": cc.steps,
            "scores": scores,
        }
    )
    (folder / "scores.json").write_text(json.dumps(scores, indent=1))
    (folder / "report.md").write_text(report(scores))
    print(report(scores))
    return folder


def report(s: dict) -> str:
    v = s["val"]
    lines = [
        f"# Controller {s['kind']} ({s['labels']} labelled transitions) for {s['run']}",
        "",
        f"Model {s['model']} ({s['latent']} latents); "
        + ("one pair per agent, its matched slot's latent" if s["per_agent"] else "the whole latent")
        + f"; {s['examples']} training pairs, final train MSE {s['train_loss']:.4g}.",
        "",
    ]
    if "skipped" in v:
        return "\n".join([*lines, f"Validation skipped: {v['skipped']}.", ""])
    lines += [
        "| val | value |",
        "|---|---|",
        f"| latent MSE, controller vs IDM | {v['latent_mse']:.4g} |",
        f"| latent MSE, mean training latent vs IDM | {v['mean_latent_mse']:.4g} |",
        f"| {v['rollout_steps']}-step rollout PSNR, IDM latents | {v['rollout_psnr_idm']:.2f} |",
        f"| {v['rollout_steps']}-step rollout PSNR, controller latents "
        f"| {v['rollout_psnr_controller']:.2f} |",
        "",
        "Rollout PSNR against the decoded ground-truth codes of the val windows.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a run folder of train/lam.py")
    p.add_argument("overrides", nargs="*", help="controller.* overrides, e.g. controller.kind=adapter")
    args = p.parse_args()
    main(args.run, args.overrides)
