"""Which dynamics a retrain trains when none is named: the kind of the env its logs record (no Ray started)."""

from __future__ import annotations

import pytest

from cluster.cli import build_parser
from cluster.commands.learn import _configs
from learners.learner import model_config_for


def test_a_retrain_on_fleet_logs_trains_the_fleet_model_unless_told_otherwise() -> None:
    assert model_config_for(None, "Warehouse-v1").dynamics == "fleet"
    assert model_config_for({"hidden": 32, "dynamics": None}, "Warehouse-v1").dynamics == "fleet"
    assert model_config_for({"dynamics": "ensemble"}, "Warehouse-v1").dynamics == "ensemble"
    assert model_config_for({}, "Nav2D-v0").dynamics == "ensemble"
    with pytest.raises(ValueError, match="unknown field"):
        model_config_for({"widht": 3}, "Nav2D-v0")


@pytest.mark.parametrize("flags, named", [([], False), (["--dynamics", "gru"], True)])
def test_wm_learn_leaves_the_kind_to_the_learner_unless_given(flags: list[str], named: bool) -> None:
    argv = ["learn", "--data", "logs", "--registry", "reg", *flags]
    model_cfg, _ = _configs(build_parser(argv).parse_args(argv))
    assert ("dynamics" in model_cfg) == named and model_cfg.get("dynamics", "gru") == "gru"
