"""The plain sweep settings (``tune.space``) are the ones ``wm tune`` and ``SweepConfig`` use, as Ray Tune domains."""

from __future__ import annotations

from ray.tune.search.sample import Categorical, Float

from cluster.cli import build_parser
from tune.space import DEFAULT_SPACE, Choice, LogUniform, describe
from tune.sweep import SweepConfig, default_space


def test_default_space_is_the_plain_one_as_tune_domains() -> None:
    space = default_space()
    assert list(space) == list(DEFAULT_SPACE)
    for name, plain in DEFAULT_SPACE.items():
        domain = space[name]
        if isinstance(plain, Choice):
            assert isinstance(domain, Categorical) and tuple(domain.categories) == plain.values
        else:
            assert isinstance(plain, LogUniform) and isinstance(domain, Float)
            assert (domain.lower, domain.upper) == (plain.lower, plain.upper)


def test_command_defaults_are_the_sweep_configs() -> None:
    args = build_parser(["tune"]).parse_args(["tune", "--data", "logs", "--samples", "1"])
    defaults = SweepConfig()
    assert (args.scheduler, args.grace_epochs, args.holdout_fraction) == (
        defaults.scheduler, defaults.grace_epochs, defaults.holdout_fraction)
    assert describe({"hidden": Choice((8, 16)), "lr": LogUniform(1e-3, 1e-2)}) == (
        "hidden=8,16, lr=log-uniform 0.001..0.01")
