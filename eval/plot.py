"""Accuracy curves as PNG line plots, drawn with PIL (no plotting library): y in [0, 1], x from 0 to the largest x.

``eval.generation_curve`` plots prompt accuracy against the stack's training minutes with it, and
``bench/curves.py --plot`` zero-shot accuracy against a run's wall-clock minutes.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from multimodal.io import atomic_save_image

__all__ = ["PALETTE", "Series", "heat_maps", "line_plot"]

PALETTE = ((200, 30, 30), (30, 80, 230), (30, 150, 60), (230, 130, 20), (140, 50, 180), (90, 90, 90))
_DASH = 6  # pixels on, then off, of a dashed line


@dataclass(frozen=True)
class Series:
    label: str
    points: list[tuple[float, float]]  # (x, y), y in [0, 1]
    color: tuple[int, int, int] = PALETTE[0]
    dashed: bool = False


def _solid(draw: ImageDraw.ImageDraw, pts: list[tuple[float, float]], color: tuple[int, int, int]) -> None:
    if len(pts) > 1:
        draw.line(pts, fill=color, width=2)


def _dashed(draw: ImageDraw.ImageDraw, pts: list[tuple[float, float]], color: tuple[int, int, int]) -> None:
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        length = max(1.0, math.hypot(x1 - x0, y1 - y0))
        for start in range(0, int(length), 2 * _DASH):
            a, b = start / length, min(1.0, (start + _DASH) / length)
            segment = [x0 + a * (x1 - x0), y0 + a * (y1 - y0), x0 + b * (x1 - x0), y0 + b * (y1 - y0)]
            draw.line(segment, fill=color, width=2)


def line_plot(
    series: list[Series], path: Path, *, title: str, x_label: str, goals: tuple[float, ...] = (), legend: bool = True
) -> None:
    """Draw ``series`` (lines with dots) on one pair of axes and save the PNG atomically at ``path``.

    ``goals`` are drawn as grey horizontal lines; ``legend`` lists the labels in the lower right corner, else each
    label is written beside its last point."""
    if not any(s.points for s in series):
        raise ValueError("nothing to plot: every series is empty")
    W, H, left, right, top, bottom = 720, 440, 60, 20, 30, 50
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    x_max = max(x for s in series for x, _ in s.points) * 1.05 or 1.0

    def xy(x: float, y: float) -> tuple[float, float]:
        return left + (W - left - right) * x / x_max, H - bottom - (H - top - bottom) * y

    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for k in range(0, 11, 2):
        y = xy(0, k / 10)[1]
        d.line([left - 4, y, left, y], fill="black")
        d.text((left - 34, y - 6), f"{k / 10:.1f}", fill="black")
    tick = next(t for t in (1, 2, 5, 10, 20, 30, 60, 120, 10**9) if x_max / t <= 12)
    for m in range(0, int(x_max) + 1, tick):
        x = xy(m, 0)[0]
        d.line([x, H - bottom, x, H - bottom + 4], fill="black")
        d.text((x - 8, H - bottom + 8), str(m), fill="black")
    d.text((W // 2 - 4 * len(x_label), H - 22), x_label, fill="black")
    d.text((left, 8), title, fill="black")
    for goal in goals:
        y = xy(0, goal)[1]
        d.line([left, y, W - right, y], fill=(160, 160, 160), width=1)
        d.text((left + 4, y - 12), f"goal {goal}", fill=(120, 120, 120))
    legend_x = (
        W - right - 8 - 7 * max(len(s.label) for s in series) - 30
    )  # lower right, where rising curves leave room
    for i, s in enumerate(series):
        draw_line = _dashed if s.dashed else _solid
        pts = [xy(x, y) for x, y in s.points]
        draw_line(d, pts, s.color)
        for x, y in pts:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=s.color)
        if legend:
            y = H - bottom - 14 * (len(series) - i) - 6
            draw_line(d, [(legend_x, y + 6), (legend_x + 22, y + 6)], s.color)
            d.text((legend_x + 28, y), s.label, fill=s.color)
        elif pts:
            d.text((pts[-1][0] - 60, pts[-1][1] - 16), s.label, fill=s.color)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_image(img, path)


def heat_maps(panels: list[tuple[str, list[list[float]]]], path: Path, *, title: str, cell: int = 0) -> None:
    """Matrices as grids of cells, white (0) to dark red (1), side by side with their titles; saved atomically.

    Values are clipped to [0, 1] (attention weights, head scores); ``cell`` is the side of a cell in pixels (0: as
    large as fits 360 px per panel)."""
    if not panels or any(not m or not m[0] for _, m in panels):
        raise ValueError("nothing to plot: a heat map needs at least one non-empty matrix")
    sides = [(len(m), len(m[0])) for _, m in panels]
    cell = cell or max(2, 360 // max(max(r, c) for r, c in sides))
    gap, top = 20, 44
    W = gap + sum(c * cell + gap for _, c in sides)
    H = top + max(r for r, _ in sides) * cell + gap
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    d.text((gap, 6), title, fill="black")
    x0 = gap
    for (name, matrix), (rows, cols) in zip(panels, sides, strict=True):
        d.text((x0, 24), name, fill="black")
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                v = min(1.0, max(0.0, float(value)))
                color = (255 - int(v * 75), int(255 * (1 - v)), int(255 * (1 - v)))  # white -> dark red
                box = [x0 + j * cell, top + i * cell, x0 + (j + 1) * cell - 1, top + (i + 1) * cell - 1]
                d.rectangle(box, fill=color)
        d.rectangle([x0 - 1, top - 1, x0 + cols * cell, top + rows * cell], outline=(120, 120, 120))
        x0 += cols * cell + gap
    atomic_save_image(img, path)
