"""Every command line's --help shows each option's default (and no "(default: None)" for options without one)."""

from __future__ import annotations

import importlib
import re

import pytest

COMMON = {"--batch-size": "256", "--workers": "2"}  # eval.common.base_parser's

# module -> option -> the default its help must show
DEFAULTS = {
    "eval.classify": {**COMMON, "--split": "test"},
    "eval.zeroshot": COMMON,
    "eval.retrieval": {**COMMON, "--split": "test"},
    "eval.caption": {"--samples": "1000", "--device": "auto"},
    "eval.control": {"--env": "all", "--episodes": "20", "--device": "auto"},
    "eval.generation": {
        "--n": "8",
        "--steps": "25",
        "--sampler": "dpmsolver++",
        "--prior-guidance": "4.0",
        "--decoder-guidance": "3.0",
        "--seed": "0",
        "--dataset": "shapes",
        "--device": "auto",
    },
    "eval.composition": {"--n": "8", "--steps": "25", "--sampler": "dpmsolver++", "--seed": "0", "--device": "auto"},
    "eval.generation_curve": {"--n": "4", "--steps": "25", "--seed": "0", "--device": "auto"},
    "bench.compare_vision": {"--models": "resnet18,aa_resnet18,vit", "--seeds": "0,1,2"},
    "bench.clip_batch": {"--samples": "153600", "--chunk": "256", "--parallel": "2"},
}


def _help(module: str, capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as e:
        importlib.import_module(module).main(["--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # one line: wrapping may split "(default: X)"


@pytest.mark.parametrize("module", sorted(DEFAULTS))
def test_help_shows_every_default(module: str, capsys: pytest.CaptureFixture) -> None:
    text = _help(module, capsys)
    options = text.split(" options: ", 1)[1]  # past the usage and description, which name options too
    for option, default in DEFAULTS[module].items():
        entry = re.split(r" --[a-z]", options.split(f" {option} ", 1)[1], maxsplit=1)[0]  # the option's help
        assert entry.endswith(f"(default: {default})"), (option, entry)
    assert "(default: None)" not in text and "(default: False)" not in text  # no default, flags: nothing to show
    assert text.count("(default:") >= len(DEFAULTS[module])


def test_training_help_lists_the_recipe_keys_with_their_defaults(capsys: pytest.CaptureFixture) -> None:
    text = _help("training.train", capsys)
    assert text.startswith("usage: accelerate launch -m training.train [-h] recipe [overrides ...]")
    assert "recipe keys and their defaults" in text
    for entry in ("train steps=1000", "optim lr=0.001", "betas=[0.9,0.999]", "model name=vit_nano_patch4_32"):
        assert entry in text, entry
    assert "(default: None)" not in text
