"""The prompt set and the Frechet distance (multimodal.evaluation.generation), and eval.generation_curve's plot."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from eval.generation_curve import plot_curve
from multimodal.evaluation import frechet_distance, prompt_set


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
    assert img.size == (640, 400)
    colours = np.unique(np.asarray(img.convert("RGB")).reshape(-1, 3), axis=0)
    assert len(colours) > 3  # background, axes, two coloured lines
