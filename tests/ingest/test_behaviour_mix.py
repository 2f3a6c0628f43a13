"""The offline-RL behaviour mix (``source.policy=mixed``): each episode played by the expert, an
epsilon-noisy expert or a random policy, drawn from its seed and recorded in its meta; the mix keys stay
out of the identity of datasets ingested without it."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from ingest import procgen as P
from ingest.config import build_config
from tests.ingest.test_demos import GAME, save_policy


@pytest.fixture(scope="module")
def expert(tmp_path_factory):
    return save_policy(tmp_path_factory.mktemp("expert"))


def mixed(expert_path, **source):
    kw = {
        "game": GAME,
        "resolution": 32,
        "max_episode_len": 12,
        "policy": "mixed",
        "expert": str(expert_path),
    }
    return P.ProcgenConfig(**{**kw, **source})


def test_each_episode_draws_its_behaviour_from_its_seed_and_records_it(expert):
    cfg = mixed(expert)
    episodes = [P.render_episode(cfg, s) for s in range(12)]
    behaviours = Counter(e.info["behaviour"] for e in episodes)
    assert set(behaviours) == set(P.BEHAVIOURS)  # 12 draws at (0.4, 0.3, 0.3): all three occur
    again = P.render_episode(cfg, 3)
    assert again.info["behaviour"] == episodes[3].info["behaviour"]
    assert np.array_equal(again.actions, episodes[3].actions)
    only_expert = mixed(expert, behaviour_mix=(1.0, 0.0, 0.0))
    as_expert = P.ProcgenConfig(game=GAME, resolution=32, max_episode_len=12, policy=str(expert))
    for s in range(3):  # the "expert" behaviour plays exactly as the expert checkpoint would
        assert P.render_episode(only_expert, s).info["behaviour"] == "expert"
        assert np.array_equal(
            P.render_episode(only_expert, s).actions, P.render_episode(as_expert, s).actions
        )


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ({"expert": ""}, "needs source.expert"),
        ({"behaviour_mix": (1.0, 0.0)}, "three weights"),
        ({"behaviour_mix": (0.0, 0.0, 0.0)}, "positive sum"),
        ({"epsilon": 1.5}, "epsilon"),
    ],
)
def test_bad_mixes_are_refused(expert, source, match):
    with pytest.raises(ValueError, match=match):
        mixed(expert, **source)


def test_mix_keys_stay_out_of_the_identity_of_other_policies(expert):
    plain = build_config(GAME, {"source": {"policy": "random"}}).to_dict()["source"]
    assert "behaviour_mix" not in plain and "expert" not in plain
    mix = build_config(GAME, {"source": {"policy": "mixed", "expert": str(expert)}}).to_dict()["source"]
    assert mix["behaviour_mix"] == [0.4, 0.3, 0.3] and mix["expert"] == str(expert.resolve())
