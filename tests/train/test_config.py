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
