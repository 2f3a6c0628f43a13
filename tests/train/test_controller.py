"""The controller (model/controller.py, train/controller.py): it recovers a known linear map (the MLP from
the action alone, the adapter also from the acting slot's state), trains end to end on a world-model run
(per matched agent slot for FLAM, the whole latent for Genie) and is refused once its world model moves on."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from model.controller import Controller
from train import controller as controllers
from train import lam as train_lam
from train.common import load_checkpoint
from train.config import load_config

pytestmark = pytest.mark.usefixtures("seeded_one_thread")


def fitted(kind: str, ex: controllers.Examples, spec: dict, tmp_path) -> tuple[Controller, float]:
    cfg = load_config(None, {"controller": {"kind": kind, "steps": 300, "batch_size": 64, "lr": 3e-3}})
    net = controllers.build_controller(spec, {"kind": kind, "width": 32, "depth": 1, "num_heads": 2})
    bound = controllers.BoundController(net, None, spec)
    losses = controllers.fit(bound, ex, cfg, torch.device("cpu"), tmp_path / f"{kind}.csv")
    assert (tmp_path / f"{kind}.csv").read_text().startswith("step,loss")
    return net, sum(losses[-20:]) / 20


def test_controller_recovers_a_known_linear_map(tmp_path):
    """Targets z = W[a] + V s_focus: the MLP (action only) learns W[a] exactly when V = 0; with V it is
    left with the state part, which the adapter (reading the acting slot) recovers, on held-out examples."""
    gen = torch.Generator().manual_seed(0)
    n, k, d, a_dim, actions = 768, 3, 8, 4, 5
    spec = {"per_agent": True, "num_actions": actions, "actors": 1, "latents": k, "latent_dim": a_dim}
    spec.update(out_dim=a_dim, state_dim=d)
    w = torch.randn(actions, a_dim, generator=gen)
    v = torch.randn(d, a_dim, generator=gen) * 0.5
    state = torch.randn(n, k, d, generator=gen)
    acts = torch.randint(actions, (n, 1), generator=gen)
    focus = torch.randint(k, (n,), generator=gen)
    train, held = torch.arange(512), torch.arange(512, n)

    only_action = controllers.Examples(state, train, acts[train], focus[train], w[acts[train, 0]])
    net, loss = fitted("mlp", only_action, spec, tmp_path)
    assert loss < 1e-3
    with torch.no_grad():
        torch.testing.assert_close(net(torch.eye(actions)), w, atol=0.03, rtol=0)

    target = w[acts[:, 0]] + state[torch.arange(n), focus] @ v
    with_state = controllers.Examples(state, train, acts[train], focus[train], target[train])
    errors = {}
    for kind in ("mlp", "adapter"):
        net, _ = fitted(kind, with_state, spec, tmp_path)
        bound = controllers.BoundController(net.eval(), None, spec)
        with torch.no_grad():
            pred = bound.predict(acts[held], state[held], focus[held])
        errors[kind] = float((pred - target[held]).square().mean())
    state_part = float((state[held, focus[held]] @ v).var(0).mean())
    assert errors["mlp"] > 0.5 * state_part  # it cannot see the state
    assert errors["adapter"] < 0.05 * state_part, errors


def test_controllers_train_on_runs_and_are_refused_when_stale(small_world, tmp_path):
    _, runs = small_world
    settings = ["controller.labels=60", "controller.steps=5", "controller.val_windows=2"]
    folder = controllers.main(
        runs["flam"], [*settings, "controller.kind=adapter", f"controller.out={tmp_path / 'f'}"]
    )
    scores = json.loads((folder / "scores.json").read_text())
    assert scores["per_agent"] and scores["labels"] == 60 and scores["examples"] == 60 * 4
    assert {"latent_mse", "rollout_psnr_idm", "rollout_psnr_controller"} <= set(scores["val"])
    assert "controller latents" in (folder / "report.md").read_text()
    bound = controllers.load_controller(folder, runs["flam"], torch.device("cpu"))
    state = torch.randn(2, 4, bound.spec["state_dim"])
    z = bound.latents(
        torch.tensor([[2, 6, 6, 6], [0, 6, 6, 6]]), state, torch.tensor([[1, 0, 2, 3], [3, 2, 1, 0]])
    )
    assert z.shape == (2, 4, bound.spec["latent_dim"])
    mtime = (folder / "ckpt" / "latest").stat().st_mtime_ns
    assert (
        controllers.main(runs["flam"], [*settings, "controller.kind=adapter", f"controller.out={folder}"])
        == folder
    )
    assert (folder / "ckpt" / "latest").stat().st_mtime_ns == mtime  # current: kept, not retrained

    genie = controllers.main(
        runs["genie"], [*settings, "controller.kind=mlp", f"controller.out={tmp_path / 'g'}"]
    )
    assert not json.loads((genie / "scores.json").read_text())["per_agent"]
    with pytest.raises(ValueError, match="real actions already"):
        controllers.main(runs["world_model"], settings)
    with pytest.raises(ValueError, match=r"controller\.\* and data\.root only"):
        controllers.main(runs["flam"], ["lam.beta=1"])

    # the world model trains on: the controller fitted to its old checkpoint is refused
    moved = tmp_path / "flam-moved"
    shutil.copytree(runs["flam"], moved, ignore=shutil.ignore_patterns("controller", ".lock"))
    config = load_checkpoint(moved / "ckpt" / "latest")["config"]
    config["lam_train"].update(run_dir=str(moved), steps=3)
    train_lam.main(load_config(None, config))
    with pytest.raises(ValueError, match="stale"):
        controllers.load_controller(folder, moved, torch.device("cpu"))
