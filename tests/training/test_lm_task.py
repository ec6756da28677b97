"""The lm task: the recipe resolves against the data, a tiny attention-only model trains, evaluation reports the two
halves and the head scores."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO
from training.config import TrainConfig
from training.tasks import LmTask
from training.train import train


def recipe(out, **train_overrides) -> dict:
    return {
        "run": {"name": "tiny-lm", "out_dir": str(out), "seed": 0},
        "task": {
            "name": "lm",
            "vocab_size": 16,
            "min_period": 3,
            "max_period": 6,
            "score_period": 5,
            "eval_sequences": 64,
        },
        "model": {"name": "attn_only_lm", "args": {"depth": 2, "dim": 16, "heads": 2}},
        "data": {"batch_size": 16, "eval_split": None},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "train": {"steps": 40, "log_every": 10, "eval_every": 40, "checkpoint_every": 0, **train_overrides},
    }


def test_the_recipe_takes_vocabulary_and_context_from_the_task(tmp_path) -> None:
    cfg = LmTask(TrainConfig.from_dict(recipe(tmp_path))).resolve()
    assert cfg.model.args["vocab_size"] == 16 and cfg.model.args["context_length"] == 13
    bad = recipe(tmp_path)
    bad["model"]["args"]["vocab_size"] = 99
    with pytest.raises(ValueError, match=r"model.args.vocab_size=99 disagrees with the task's 16"):
        LmTask(TrainConfig.from_dict(bad)).resolve()


def test_a_tiny_run_trains_and_reports_halves_and_head_scores(tmp_path) -> None:
    result = train(TrainConfig.from_dict(recipe(tmp_path / "run")))
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [h["train/loss"] for h in history if "train/loss" in h]
    assert losses[-1] < losses[0]
    for key in ("first_half_loss", "repeat_loss", "induction_max_l1", "previous_token_max_l0"):
        assert 0 <= result[f"eval/{key}"] < 10, key


def test_the_recipes_load() -> None:
    for depth in (0, 1, 2):
        cfg = TrainConfig.load(REPO / "configs" / "circuits" / f"attn{depth}.yaml")
        assert cfg.task.name == "lm" and cfg.model.args["depth"] == depth
