"""multimodal.config: typed loading, overrides, and errors that name the key and the nearest valid one."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import pytest

from multimodal.config import Config, ConfigError, apply_overrides, parse_override


@dataclasses.dataclass(frozen=True)
class Optim(Config):
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["cosine", "constant"] = "cosine"
    clip: float | None = 1.0
    lr_mult: dict[str, float] | None = None


@dataclasses.dataclass(frozen=True)
class Recipe(Config):
    name: str = "run"
    steps: int = 10
    amp: bool = False
    optim: Optim = dataclasses.field(default_factory=Optim)
    tags: tuple[str, ...] = ()


def test_from_dict_types_and_defaults():
    cfg = Recipe.from_dict({"steps": 5, "optim": {"lr": "3e-4", "betas": [0.8, 0.9]}, "tags": ["a", "b"]})
    assert cfg.steps == 5 and cfg.optim.lr == pytest.approx(3e-4) and cfg.optim.betas == (0.8, 0.9)
    assert cfg.tags == ("a", "b") and cfg.optim.schedule == "cosine" and cfg.amp is False


def test_overrides_parse_to_field_types():
    cfg = Recipe().override(["steps=200", "optim.lr=1e-2", "amp=true", "optim.clip=null", "tags=[x,y]"])
    assert cfg.steps == 200 and isinstance(cfg.steps, int)
    assert cfg.optim.lr == 0.01 and cfg.amp is True and cfg.optim.clip is None and cfg.tags == ("x", "y")
    assert Recipe().steps == 10  # frozen: overriding makes a new object
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 3  # type: ignore[misc]


def test_unknown_key_names_it_and_the_nearest():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'; did you mean 'optim.lr'\?"):
        Recipe().override(["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"'stepz'; did you mean 'steps'"):
        Recipe.from_dict({"stepz": 3})


def test_misplaced_key_suggests_its_section():
    with pytest.raises(ConfigError, match=r"'lr'; did you mean 'optim.lr'"):
        Recipe.from_dict({"lr": 3})


@pytest.mark.parametrize(
    "override, message",
    [
        ("steps=abc", "'steps' expects an integer, got 'abc'"),
        ("steps=1.5", "'steps' expects an integer"),
        ("amp=maybe", "'amp' expects true or false"),
        ("optim.lr=fast", "'optim.lr' expects a number"),
        ("optim.schedule=cosin", "did you mean 'cosine'"),
        ("optim.betas=[1]", "'optim.betas' expects 2 values"),
        ("optim=3", "'optim' is a section"),
        ("optim.clip=high", "'optim.clip' expects a number, got 'high'"),  # X | None: X's own message
        (
            "optim.lr_mult={head:5}",
            "'head:5' reads as a key without a value; YAML needs a space after the colon: {head: 5}",
        ),
    ],
)
def test_wrong_type_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("?", r"\?")):
        Recipe().override([override])


def test_replace_merges_sections_and_round_trips():
    cfg = Recipe().replace(optim={"lr": 0.5}, steps=3)
    assert cfg.optim.lr == 0.5 and cfg.optim.betas == (0.9, 0.999) and cfg.steps == 3
    assert Recipe.from_dict(cfg.to_dict()) == cfg
    assert cfg.flat()["optim.lr"] == 0.5


def test_parse_override_rejects_malformed():
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        parse_override("steps")
    with pytest.raises(ConfigError, match="empty key"):
        parse_override("a..b=1")
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}


def test_a_yaml_boolean_word_is_read_back_as_the_literal_it_spells():
    @dataclasses.dataclass(frozen=True)
    class Precision(Config):
        precision: Literal["no", "bf16", "fp16"] = "bf16"

    assert parse_override("precision=no")[1] is False  # what YAML 1.1 makes of it
    assert Precision.from_dict({}).override(["precision=no"]).precision == "no"
    assert Precision.from_dict({"precision": False}).precision == "no"
    with pytest.raises(ConfigError, match="must be one of 'no', 'bf16', 'fp16', got True"):
        Precision.from_dict({"precision": True})  # yes: no literal spells it


VIT_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "vit" / "shapes.yaml"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "model.name=vit_nano_patch4_33",
            "unknown model 'vit_nano_patch4_33' (model.name); did you mean 'vit_nano_patch4_32'? "
            "(multimodal.list_models() lists them)",
        ),
        ("model.name=zzz", "unknown model 'zzz' (model.name); see multimodal.list_models()"),
        ("model.args.dpth=3", "unknown config key 'model.args.dpth'; did you mean 'model.args.depth'?"),
        (  # a bad value's suggestion is a value, not a key
            "model.args.norm=rsm",
            "config key 'model.args.norm' must be one of 'layer', 'rms', got 'rsm'; did you mean 'rms'?",
        ),
    ],
)
def test_recipe_model_errors_name_the_recipe_key_and_a_suggestion_of_its_kind(override, message):
    from training.config import TrainConfig

    with pytest.raises(ConfigError) as e:
        TrainConfig.load(VIT_RECIPE, [override]).check_model()  # the meta-device build the trainer does for real
    assert str(e.value) == message


def test_an_unknown_model_on_the_command_line_is_one_line_and_exit_status_2(capsys):
    from training.train import main

    assert main([str(VIT_RECIPE), "model.name=vit_nano_patch4_33"]) == 2
    assert capsys.readouterr().err == (
        "error: unknown model 'vit_nano_patch4_33' (model.name); did you mean 'vit_nano_patch4_32'? "
        "(multimodal.list_models() lists them)\n"
    )
