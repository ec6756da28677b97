"""bench/compare_vision.py: the summary table and verdict, and its argument checks (training is the trainer's)."""

from __future__ import annotations

import pytest

from bench.compare_vision import main, recipe, summarize


def _runs(tops: list[float], params: int, rate: float) -> list[dict]:
    return [{"seed": i, "top1": t, "params": params, "samples_per_s": rate} for i, t in enumerate(tops)]


def test_summary_table_and_verdicts():
    figures = {
        "resnet18": _runs([0.80, 0.82, 0.81], 711_000, 900.0),
        "aa_resnet18": _runs([0.85, 0.86, 0.87], 698_000, 600.0),
        "vit": _runs([0.90, 0.70, 0.80], 644_000, 950.0),
    }
    table = summarize(figures, [0, 1, 2])
    assert "| resnet18 | 0.711M | 0.8100 | 0.0100 | 0.8000, 0.8200, 0.8100 | 900 |" in table
    assert "| vit | 0.644M | 0.8000 | 0.1000 |" in table
    assert "aa_resnet18 - resnet18: +0.0500 top-1 (mean over 3 seeds); the seed ranges do not overlap." in table
    figures["aa_resnet18"] = _runs([0.79, 0.83, 0.81], 698_000, 600.0)
    assert "within the seed-to-seed spread" in summarize(figures, [0, 1, 2])


def test_unknown_recipe_and_bad_arguments_fail_before_training(capsys):
    with pytest.raises(SystemExit, match=r"no recipe configs/vision/resnet99-shapes\.yaml"):
        recipe("resnet99", "shapes")
    with pytest.raises(SystemExit, match="no recipe"):
        main(["--dataset", "cifar100"])
    with pytest.raises(SystemExit):
        main(["--dataset", "shapes", "--seeds", "a,b"])
    assert "--seeds takes comma-separated integers" in capsys.readouterr().err
