"""Every preset in configs/ loads, and its world model matches its tokenizer's token grid."""

import pytest

from model.flam import FLAM
from model.tokenizer import Tokenizer
from train.config import load_config

from .conftest import REPO

PRESETS = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("name", PRESETS)
def test_preset_builds_consistent_models(name):
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    tokenizer = Tokenizer(cfg.tokenizer)
    assert cfg.lam.num_tokens == cfg.tokenizer.grid_size**2
    assert cfg.lam.feature_dim == len(cfg.tokenizer.levels)
    assert FLAM(cfg.lam).cfg.latent_action_dim * cfg.lam.num_slots == cfg.lam.dim  # capacity matched
    assert tokenizer.codebook_size == {5: 1024, 7: 16384}[len(cfg.tokenizer.levels)]


def test_paper_table5_values():
    assert load_config(REPO / "configs/multigrid.yaml").lam.num_slots == 4
    assert load_config(REPO / "configs/bigfish.yaml").lam.num_slots == 16
    nuplan = load_config(REPO / "configs/nuplan.yaml")
    assert (nuplan.lam.depth, nuplan.lam.num_slots, nuplan.tokenizer.arch) == (3, 16, "magvit")


@pytest.mark.parametrize("name", PRESETS)
def test_preset_builds_every_baseline_it_supports(name):
    """Every model of the zoo builds from every preset; the World Model only where there are actions."""
    from model.zoo import MODELS, build_model

    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    for model in MODELS:
        if model == "world_model" and cfg.data.dataset == "nuplan":
            with pytest.raises(ValueError, match="num_actions"):
                build_model(model, cfg.lam)
            continue
        build_model(model, cfg.lam)
