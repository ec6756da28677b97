"""The prompt set, the Frechet distance and evaluate_generation (multimodal.evaluation.generation), and
eval.generation_curve's plot."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from eval.generation import format_table, seed_list
from eval.generation_curve import plot_curve
from multimodal.evaluation import Judge, PairJudge, evaluate_generation, frechet_distance, mean_over_seeds, prompt_set
from tests.pipelines.test_unclip import tiny_pipeline


def test_prompt_set_splits_seen_and_heldout_pairs():
    seen, held = prompt_set("shapes")
    assert len(seen) == 30 and len(held) == 6
    assert ("a red triangle", 2) in held and ("a red circle", 0) in seen
    assert {c for _, c in seen}.isdisjoint({c for _, c in held})


def test_frechet_distance_of_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = a + np.array([2.0, 0.0, 0.0])
    assert frechet_distance(a, shifted) == pytest.approx(4.0, rel=1e-6)  # |mu difference|^2, same covariance
    scaled = rng.normal(size=(4000, 3)) * 2.0  # covariance 4 I against I: trace term 3 * (1 + 4 - 2 * 2) = 3
    assert frechet_distance(rng.normal(size=(4000, 3)), scaled) == pytest.approx(3.0, abs=0.3)


def test_plot_curve_writes_a_png(tmp_path):
    points = [{"minutes": 30.0, "seen": 0.2, "heldout": 0.1}, {"minutes": 60.0, "seen": 0.5, "heldout": 0.2}]
    plot_curve(points, tmp_path / "curve.png")
    img = Image.open(tmp_path / "curve.png")
    assert img.size == (720, 440)
    colours = np.unique(np.asarray(img.convert("RGB")).reshape(-1, 3), axis=0)
    assert len(colours) > 3  # background, axes, two coloured lines


class Always(nn.Module):
    """A "classifier" of ``classes`` classes (36 colour-shape ones by default) that always answers class ``k`` (its
    head: zero weights, one bias)."""

    def __init__(self, k: int, classes: int = 36) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
        self.head = nn.Linear(4, classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.head.bias.data[k] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_evaluate_generation_scores_every_prompt_and_writes_grids(tiny_shapes, tmp_path):
    seen, held = prompt_set(str(tiny_shapes))
    judge = Judge(Always(0), image_size=8, mean=[0.5] * 3, std=[0.5] * 3)  # always "red circle"
    run = dict(n=2, steps=2, dataset=str(tiny_shapes), real_images=40)
    results = evaluate_generation(tiny_pipeline(), judge, grid_dir=tmp_path, grid_prefix="g-", **run)
    for cond in ("prior", "text_embedding"):
        for split, prompts in (("seen", seen), ("heldout", held)):
            r, classes = results[cond][split], [c for _, c in prompts]
            assert r["n"] == 2 * len(prompts)
            assert r["prompt_accuracy"] == pytest.approx(classes.count(0) / len(classes))
            assert r["color_accuracy"] == pytest.approx(sum(c // 6 == 0 for c in classes) / len(classes))
            assert r["shape_accuracy"] == pytest.approx(sum(c % 6 == 0 for c in classes) / len(classes))
            assert -1 <= r["clip_score"] <= 1 and r["fd_judge_features"] >= 0
            width, height = Image.open(tmp_path / f"g-{cond}-{split}.png").size
            assert height > width  # one row per prompt (6 or 30), n = 2 columns
    assert results["real"]["n"] == 40 and 0 <= results["real"]["judge_accuracy"] <= 1


def test_a_colour_judge_and_a_shape_judge_give_the_colour_shape_class():
    color = Judge(Always(2, classes=6), image_size=8, mean=[0.5] * 3, std=[0.5] * 3)  # always blue
    shape = Judge(Always(3, classes=6), image_size=8, mean=[0.5] * 3, std=[0.5] * 3)  # always star
    classes, features = PairJudge(color, shape)(torch.rand(5, 3, 16, 16) * 2 - 1)
    assert classes.tolist() == [2 * 6 + 3] * 5  # "blue star" in the card's colour-major order
    assert features.shape == (5, 8)  # both judges' 4 penultimate features


def _seed_result(seed: int, seen: float, heldout: float) -> dict:
    """A result of evaluate_generation's layout (the prior condition only) with prompt accuracies seen and heldout."""

    def entry(accuracy: float, n: int) -> dict:
        return {"prompt_accuracy": accuracy, "color_accuracy": 1.0, "shape_accuracy": accuracy, "clip_score": 0.3,
                "fd_judge_features": 2.0 + seed, "n": n}  # fmt: skip

    prior = {"seen": entry(seen, 240), "heldout": entry(heldout, 48), "seconds": 10.0}
    real = {"n": 1000, "judge_accuracy": 0.83, "clip_score": 0.31}
    return {"n_per_prompt": 8, "steps": 25, "seed": seed, "prior": prior, "real": real}


def test_mean_over_seeds_gives_means_and_sample_standard_deviations():
    merged = mean_over_seeds([_seed_result(0, 0.80, 0.0), _seed_result(1, 0.84, 0.5), _seed_result(2, 0.88, 1.0)])
    seen, held = merged["prior"]["seen"], merged["prior"]["heldout"]
    assert seen["prompt_accuracy"] == pytest.approx(0.84) and seen["prompt_accuracy_std"] == pytest.approx(0.04)
    assert held["prompt_accuracy"] == pytest.approx(0.5) and held["prompt_accuracy_std"] == pytest.approx(0.5)
    assert seen["color_accuracy_std"] == 0.0 and seen["fd_judge_features"] == pytest.approx(3.0)
    assert seen["n"] == 3 * 240 and merged["prior"]["seconds"] == 30.0  # counts and times add up
    assert merged["seeds"] == [0, 1, 2] and "seed" not in merged and merged["n_per_prompt"] == 8
    assert [s["prior"]["seen"]["prompt_accuracy"] for s in merged["per_seed"]] == [0.80, 0.84, 0.88]
    assert merged["real"]["judge_accuracy"] == 0.83
    table = format_table(merged)
    assert "0.8400 +- 0.0400" in table and "0.5000 +- 0.5000" in table
    assert "+-" not in format_table(_seed_result(0, 0.8, 0.0))  # one seed: plain figures


def test_mean_over_seeds_refuses_one_seed_and_repeated_seeds():
    with pytest.raises(ValueError, match="two or more seeds"):
        mean_over_seeds([_seed_result(0, 0.8, 0.0)])
    with pytest.raises(ValueError, match="same seed twice"):
        mean_over_seeds([_seed_result(1, 0.8, 0.0), _seed_result(1, 0.9, 0.0)])


def test_seed_option_takes_a_comma_separated_list():
    assert seed_list("0") == [0] and seed_list("0,1,2") == [0, 1, 2]
    with pytest.raises(argparse.ArgumentTypeError, match="comma-separated"):
        seed_list("0;1")
    with pytest.raises(argparse.ArgumentTypeError, match="twice"):
        seed_list("1,1")
