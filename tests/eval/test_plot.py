"""eval.plot: accuracy curves drawn where their values say, saved atomically."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from eval.plot import PALETTE, Series, line_plot

# The plot's geometry (eval.plot.line_plot): 720 x 440, axes from x=60 to 700 and y=30 (1.0) to 390 (0.0).
LEFT, RIGHT, TOP, BOTTOM = 60, 700, 30, 390


def pixel(img: Image.Image, x: float, y: float, x_max: float) -> tuple[int, int, int]:
    px = LEFT + (RIGHT - LEFT) * x / (x_max * 1.05)
    py = BOTTOM - (BOTTOM - TOP) * y
    return img.getpixel((round(px), round(py)))


def test_points_are_drawn_where_their_values_say_in_their_series_colour(tmp_path):
    solid = Series("before", [(1.0, 0.2), (4.0, 0.5), (8.0, 0.9)], PALETTE[0])
    dashed = Series("after", [(2.0, 0.7), (6.0, 0.6)], PALETTE[1], dashed=True)
    line_plot([solid, dashed], tmp_path / "p.png", title="zero-shot top-1", x_label="minutes", goals=(0.8,))
    img = Image.open(tmp_path / "p.png").convert("RGB")
    assert img.size == (720, 440)
    for s in (solid, dashed):
        for x, y in s.points:
            assert pixel(img, x, y, x_max=8.0) == s.color
    assert pixel(img, 3.0, 0.8, x_max=8.0) == (160, 160, 160)  # the goal line
    assert img.getpixel((LEFT + 1, BOTTOM - 100)) == (255, 255, 255)  # nothing drawn there
    assert not list(tmp_path.glob(".*.tmp"))


def test_nothing_to_plot_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="nothing to plot"):
        line_plot([Series("a", [])], tmp_path / "p.png", title="t", x_label="x")
    assert not (tmp_path / "p.png").exists()


def test_a_dashed_line_has_gaps(tmp_path):
    line_plot([Series("a", [(0.0, 0.5), (10.0, 0.5)], PALETTE[2], dashed=True)], tmp_path / "p.png", title="",
              x_label="", legend=False)  # fmt: skip
    row = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))[BOTTOM - 180, LEFT + 20 : RIGHT - 60]
    on = (row == np.array(PALETTE[2])).all(axis=1)
    assert 0.3 < on.mean() < 0.7  # about half on, half off
