"""train/compare.py's CPU-sized presets: the same token grid and models as the full preset, smaller."""

import pytest

from model.tokenizer import Tokenizer
from model.zoo import TABLE1_ORDER, build_model
from train.compare import brief_config, with_runs
from train.config import load_config

from .conftest import REPO


@pytest.mark.parametrize("name", ["multigrid", "multigrid_correlated", "bigfish", "leaper", "starpilot"])
def test_brief_keeps_the_token_grid_and_builds_every_model(name, tmp_path):
    full = load_config(REPO / "configs" / f"{name}.yaml")
    brief = brief_config(full)
    assert Tokenizer(brief.tokenizer).cfg.grid_size == full.tokenizer.grid_size
    assert (brief.lam.num_tokens, brief.lam.num_slots) == (full.lam.num_tokens, full.lam.num_slots)
    assert brief.lam_train.steps < full.lam_train.steps and brief.ingest["episodes"] > 0
    assert brief.data.root != full.data.root  # never touches the user's full dataset
    for model in TABLE1_ORDER:
        cfg = with_runs(brief, tmp_path, model)
        assert cfg.lam_run_dir == tmp_path / model and cfg.model == model
        build_model(model, cfg.lam)


def test_brief_refuses_nuplan():
    with pytest.raises(ValueError, match="nuPlan"):
        brief_config(load_config(REPO / "configs/nuplan.yaml"))
