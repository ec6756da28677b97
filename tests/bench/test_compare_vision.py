"""bench/compare_vision.py: the summary table and verdict, and its argument checks (training is the trainer's)."""

from __future__ import annotations

import pytest
from PIL import Image
from scipy import stats

from bench.compare_vision import main, paired_difference, recipe, st_grid, summarize, twins
from tests.conftest import tiny_recipe, train_recipe


def _runs(tops: list[float], params: int, rate: float) -> list[dict]:
    return [{"seed": i, "top1": t, "params": params, "samples_per_s": rate} for i, t in enumerate(tops)]


def test_summary_table_and_paired_verdicts():
    figures = {
        "resnet18": _runs([0.80, 0.82, 0.81], 711_000, 900.0),
        "aa_resnet18": _runs([0.85, 0.86, 0.87], 698_000, 600.0),
        "vit": _runs([0.90, 0.70, 0.80], 644_000, 950.0),
        "stn_vit": _runs([0.89, 0.71, 0.80], 653_000, 760.0),
    }
    table = summarize(figures, [0, 1, 2])
    assert "| resnet18 | 0.711M | 0.8100 | 0.0100 | 0.8000, 0.8200, 0.8100 | 900 |" in table
    assert "| vit | 0.644M | 0.8000 | 0.1000 |" in table
    # differences 0.05, 0.04, 0.06: mean 0.05, sd 0.01, t(0.975, 2) = 4.303 -> +-0.0248
    assert (
        "| aa_resnet18 - resnet18 | +0.0500 | [+0.0252, +0.0748] | better: the interval excludes 0 | 0.67x |" in table
    )
    assert "| stn_vit - vit | +0.0000 | [-0.0248, +0.0248] | not settled: the interval includes 0 | 0.80x |" in table


def test_the_interval_is_scipys_paired_t_interval():
    variant, base = [0.91, 0.88, 0.93, 0.90, 0.95], [0.90, 0.89, 0.90, 0.86, 0.91]
    mean, lo, hi = paired_difference(variant, base)
    ci = stats.ttest_rel(variant, base).confidence_interval(0.95)
    assert (lo, hi) == pytest.approx((ci.low, ci.high), abs=1e-12) and mean == pytest.approx(0.022)
    assert twins(["resnet18", "aa_resnet18", "stn_resnet18", "vit", "stn_vit"]) == [
        ("aa_resnet18", "resnet18"), ("stn_resnet18", "resnet18"), ("stn_vit", "vit")
    ]  # fmt: skip


def test_an_stn_recipe_trains_on_distorted_images_and_draws_its_grid(tiny_shapes, tmp_path):
    recipe_ = tiny_recipe(tiny_shapes, tmp_path / "run", data={"distort": "rts", "num_workers": 0})
    recipe_["model"] = {"name": "stn", "args": {"model": "vitc_nano_patch8_32", **recipe_["model"]["args"]}}
    results = train_recipe(tmp_path, recipe_)
    assert 0.0 <= results["eval/top1"] <= 1.0
    out = st_grid(tmp_path / "run", tmp_path / "grid.png", columns=6)
    assert Image.open(out).size[1] == 2 * (4 * 32 + 2) + 2  # two rows of 128 px images, 2 px apart


def test_unknown_recipe_and_bad_arguments_fail_before_training(capsys):
    with pytest.raises(SystemExit, match=r"no recipe configs/vision/resnet99-shapes\.yaml"):
        recipe("resnet99", "shapes")
    with pytest.raises(SystemExit, match="no recipe"):
        main(["--dataset", "cifar100"])
    with pytest.raises(SystemExit):
        main(["--dataset", "shapes", "--seeds", "a,b"])
    assert "--seeds takes comma-separated integers or a range A-B" in capsys.readouterr().err
    for model in ("stn_resnet18", "stn_vit"):
        for dataset in ("shapes", "digits"):
            assert recipe(model, dataset).is_file()
