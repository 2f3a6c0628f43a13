"""Every preset in configs/ loads, and its world model builds on its tokenizer's token grid (the numbers a
run reads from the token cache: ``with_token_shape``)."""

import pytest
import torch

from model.flam import FLAM
from model.tokenizer import Tokenizer
from tests.helpers import REPO
from train.config import brief_config, load_config, with_token_shape

# configs/brief.yaml is the CPU-size overlay applied over a preset, not a preset of its own.
PRESETS = sorted(p.stem for p in (REPO / "configs").glob("*.yaml") if p.stem != "brief")


def load(name: str, brief: bool = False):
    """A preset (at brief size) with N and F of its own tokenizer, as its token cache will hold them."""
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    cfg = brief_config(cfg) if brief else cfg
    return with_token_shape(cfg, cfg.tokenizer.grid_size**2, len(cfg.tokenizer.levels))


@pytest.mark.parametrize("name", PRESETS)
def test_preset_builds_consistent_models(name):
    preset = load_config(REPO / "configs" / f"{name}.yaml")
    assert preset.lam.num_tokens == preset.lam.feature_dim == 0  # read from the token cache, never copied
    cfg = load(name)
    tokenizer = Tokenizer(cfg.tokenizer)
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

    cfg = load(name)
    for model in MODELS:
        if model == "world_model" and cfg.data.dataset == "nuplan":
            with pytest.raises(ValueError, match="num_actions"):
                build_model(model, cfg.lam)
            continue
        build_model(model, cfg.lam)


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("brief", [False, True])
def test_latent_capacity_is_matched_by_numbers(name, brief):
    """The paper's capacity matching, on the latents the models actually infer: FLAM's and PlaySlot's K
    per-slot latents hold as many numbers as AdaWorld's and Genie's one scene latent (= lam.dim)."""
    from model.zoo import build_model

    if brief and name in ("nuplan", "demo"):
        pytest.skip("BRIEF applies to the simulator presets")
    cfg = load(name, brief)
    features = torch.zeros(1, 2, cfg.lam.num_tokens, cfg.lam.feature_dim)
    sizes = {}
    for model in ("flam", "playslot", "adaworld", "genie"):
        with torch.no_grad():
            z = build_model(model, cfg.lam).eval().infer_actions(features)  # [1, 1, K', A']
        sizes[model] = z[0, 0].numel()
    assert sizes == dict.fromkeys(sizes, cfg.lam.dim), sizes
    assert cfg.lam.num_slots * cfg.lam.latent_action_dim == cfg.lam.dim
