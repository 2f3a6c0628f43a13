"""Config plumbing: dotted overrides are typed and unknown keys are refused."""

from dataclasses import dataclass, field

import pytest

from shards.config import ConfigError, apply_overrides, diff, parse_overrides, to_dict


@dataclass(frozen=True)
class Inner:
    levels: tuple[int, ...] = (4, 4)
    name: str = "a"


@dataclass(frozen=True)
class Outer:
    steps: int = 10
    lr: float = 1e-4
    flag: bool = False
    inner: Inner = field(default_factory=Inner)
    path: str | None = None


def test_overrides_are_parsed_and_typed():
    cfg = apply_overrides(Outer(), parse_overrides(["steps=20", "lr=3", "inner.levels=[8,5,5]", "path=/x"]))
    assert cfg == Outer(steps=20, lr=3.0, inner=Inner(levels=(8, 5, 5)), path="/x")
    assert to_dict(cfg)["inner"] == {"levels": [8, 5, 5], "name": "a"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stepz=3", "unknown config key"),
        ("inner.nme=b", "inner.nme"),
        ("steps=abc", "expects int"),
        ("flag=3", "true/false"),
        ("steps=true", "integer"),
        ("inner.levels=4", "expects a list"),
    ],
)
def test_bad_overrides_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Outer(), parse_overrides([override]))


def test_malformed_override_and_diff():
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["steps"])
    assert diff(to_dict(Outer()), to_dict(Outer(steps=3))) == ["steps: 10 -> 3"]


def test_token_shape_is_read_from_the_cache_and_a_value_set_by_hand_is_checked():
    from tests.helpers import REPO
    from train.config import load_config, with_token_shape

    cfg = load_config(REPO / "configs/bigfish.yaml")
    assert (cfg.lam.num_tokens, cfg.lam.feature_dim) == (0, 0)  # never copied into a preset
    resolved = with_token_shape(cfg, 196, 5)
    assert (resolved.lam.num_tokens, resolved.lam.feature_dim) == (196, 5)
    assert with_token_shape(resolved, 196, 5) == resolved  # matching values pass
    with pytest.raises(ValueError, match=r"lam.num_tokens=256 does not match the token cache"):
        with_token_shape(load_config(REPO / "configs/bigfish.yaml", ["lam.num_tokens=256"]), 196, 5)


def test_configs_saved_before_data_tokenizer_still_load():
    """A checkpoint's config from before the tokenizer path had one name (lam_train.tokenizer)."""
    from train.config import Config, load_config, upgrade_config_dict

    old = to_dict(Config())
    old["lam_train"]["tokenizer"] = "runs/tok/ckpt/latest"
    del old["data"]["tokenizer"]
    cfg = load_config(None, upgrade_config_dict(old))
    assert str(cfg.tokenizer_checkpoint) == "runs/tok/ckpt/latest"
    assert upgrade_config_dict(to_dict(cfg)) == to_dict(cfg)  # today's layout passes unchanged
