"""Options declared once (fastvae.options): TrainConfig's declarations drive both its validation and the flags of
`fastvae train`, so the two cannot drift apart."""
import dataclasses

import pytest

from fastvae import options
from fastvae.cli import build_parser
from fastvae.training.trainer import TrainConfig


def _train_parser():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["train"]


def test_every_train_config_flag_is_a_cli_flag_with_the_declared_default_in_its_help():
    actions = {a.dest: a for a in _train_parser()._actions}
    for name in TrainConfig.flags():
        action = actions[name]
        assert action.option_strings == ["--" + name.replace("_", "-")]
        assert action.default is None  # not given: the dataclass's default applies
        default = TrainConfig.__dataclass_fields__[name].default
        if default is not None and not isinstance(default, bool):
            assert f"default: {default}" in action.help, name
    not_flags = {f.name for f in dataclasses.fields(TrainConfig)} - set(TrainConfig.flags())
    assert not_flags == {"recipe", "recipe_options", "config", "progress", "verbose"}


@pytest.mark.parametrize("flag, text, field_value", [
    ("--epochs", "0", {"epochs": 0}), ("--iw-samples", "-1", {"iw_samples": -1}),
    ("--batch-mode", "ragged", {"batch_mode": "ragged"}),
])
def test_a_bound_is_enforced_by_the_flag_and_by_validate_alike(capsys, flag, text, field_value):
    with pytest.raises(SystemExit):
        _train_parser().parse_args([flag, text])
    assert flag in capsys.readouterr().err
    with pytest.raises(ValueError):
        TrainConfig(**field_value).validate()


@pytest.mark.parametrize("flag, text, message", [("--lr", "0", "lr must be a finite number > 0"),
                                                 ("--clip", "nan", "clip must be a finite number >= 0")])
def test_a_float_flag_is_bounded_by_the_same_validation(capsys, flag, text, message):
    from fastvae.cli import main

    assert main(["train", flag, text, "--epochs", "1", "--no-progress"]) == 2
    assert message in capsys.readouterr().err


def test_given_flags_reach_the_config_converted_and_others_stay_unset():
    args = _train_parser().parse_args(["--epochs", "3", "--plateau-decay", "OFF", "--lr", "0.5"])
    given = options.from_arguments(args, TrainConfig, TrainConfig.flags())
    assert given == {"epochs": 3, "plateau_decay": False, "lr": 0.5}
    config = TrainConfig(**given)
    config.validate()
    assert config.iw_samples == 500 and config.plateau_decay is False


def test_validation_messages_name_the_option():
    with pytest.raises(ValueError, match="mi_batch_size must be an int >= 1, got 0"):
        TrainConfig(mi_batch_size=0).validate()
    with pytest.raises(ValueError, match="seed must be an int, got 1.5"):
        TrainConfig(seed=1.5).validate()
    with pytest.raises(ValueError, match="plateau_decay must be True, False or None"):
        TrainConfig(plateau_decay="yes").validate()
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        TrainConfig(precision="fp8").validate()
    with pytest.raises(ValueError, match="momentum applies to sgd"):
        TrainConfig(momentum=0.9, optimizer="adam").validate()


# ---------------------------------------------------------------- recipe options (fastvae.training.recipes)
def test_every_recipe_option_is_declared_once_and_is_a_cli_flag():
    from fastvae.training.recipes import RECIPE_OPTION_NAMES, RECIPE_OPTIONS, RecipeOptions

    table = set().union(*RECIPE_OPTIONS.values())
    assert table == set(RECIPE_OPTION_NAMES)  # the per-recipe table names declared options, and all of them
    actions = {a.dest: a for a in _train_parser()._actions}
    for f in dataclasses.fields(RecipeOptions):
        meta = f.metadata["fastvae"]
        action = actions[f.name]
        assert action.option_strings == ["--" + f.name.replace("_", "-")] and action.default is None
        assert action.help.startswith(meta["help"]), f.name
        if meta["choices"]:
            assert list(action.choices) == list(meta["choices"]), f.name


def test_every_recipe_default_passes_its_declaration():
    from fastvae.training.recipes import RECIPE_NAMES, RecipeOptions, resolve_options

    for recipe in RECIPE_NAMES:
        resolved = resolve_options(recipe)
        options.validate(RecipeOptions(**resolved))


@pytest.mark.parametrize("flag, text, message", [
    ("--ratio", "0", "ratio must be a finite number > 0"), ("--target-kl", "-1", "target_kl must be a finite number"),
    ("--cycle-epochs", "inf", "cycle_epochs must be a finite number > 0"),
])
def test_recipe_flags_and_the_python_api_share_one_check(capsys, flag, text, message):
    from fastvae.cli import main
    from fastvae.training.recipes import resolve_options

    assert main(["train", "--recipe", "cyclical", flag, text, "--epochs", "1", "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match=message):
        resolve_options("cyclical", {flag[2:].replace("-", "_"): float(text)})


def test_recipe_flags_reach_the_options_converted():
    from fastvae.training.recipes import RecipeOptions

    args = _train_parser().parse_args(["--cycles", "3", "--aggressive", "--fb-mode", "dim", "--ratio", "0.25"])
    given = options.from_arguments(args, RecipeOptions, [f.name for f in dataclasses.fields(RecipeOptions)])
    assert given == {"cycles": 3, "aggressive": True, "fb_mode": "dim", "ratio": 0.25}
