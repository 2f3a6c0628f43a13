"""train/compare.py and the CPU-sized presets of configs/brief.yaml: every model builds on the brief
tokenizer's token grid, a staged model that would never leave its first stage is refused before any
training, and the user's full dataset is never touched."""

import pytest

from model.tokenizer import Tokenizer
from model.zoo import build_model
from tests.helpers import REPO
from train.compare import COMPARED, main, with_runs
from train.config import brief_config, check_stages, load_config, with_token_shape


@pytest.mark.parametrize("name", ["multigrid", "multigrid_correlated", "bigfish", "leaper", "starpilot"])
def test_brief_keeps_the_token_grid_and_builds_every_model(name, tmp_path):
    full = load_config(REPO / "configs" / f"{name}.yaml")
    brief = brief_config(full)
    grid = Tokenizer(brief.tokenizer).cfg.grid_size
    brief = with_token_shape(brief, grid**2, len(brief.tokenizer.levels))  # what its token cache holds
    assert brief.lam.num_slots == full.lam.num_slots and brief.lam_train.window == brief.lam.max_frames
    if name.startswith("multigrid"):  # its own design: one token per 8-pixel grid cell
        assert brief.tokenizer.image_size == 64 and brief.ingest["source"]["tile_size"] == 8
    else:
        assert Tokenizer(brief.tokenizer).cfg.grid_size == full.tokenizer.grid_size
    assert brief.lam_train.steps < full.lam_train.steps and brief.ingest["episodes"] > 0
    assert brief.data.root != full.data.root  # never touches the user's full dataset
    for model in COMPARED:
        cfg = with_runs(brief, tmp_path, model)
        assert cfg.lam_run_dir == tmp_path / model and cfg.model == model
        check_stages(cfg)
        build_model(model, cfg.lam)


def test_a_run_that_never_leaves_its_first_stage_is_refused():
    cfg = load_config(REPO / "configs/multigrid.yaml", ["model=playslot", "lam_train.steps=2000"])
    with pytest.raises(ValueError, match=r"lam.slot_pretrain_steps=5000 .* lam_train.steps=2000"):
        check_stages(cfg)  # the default 5000-step slot stage
    check_stages(load_config(REPO / "configs/multigrid.yaml", ["model=flam", "lam_train.steps=2000"]))
    with pytest.raises(ValueError, match="never leave"):
        main(REPO / "configs/multigrid.yaml", ["lam_train.steps=10"], ["flam", "slotformer"], brief=True)


def test_brief_refuses_nuplan():
    with pytest.raises(ValueError, match="nuPlan"):
        brief_config(load_config(REPO / "configs/nuplan.yaml"))
