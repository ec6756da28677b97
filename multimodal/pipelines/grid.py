"""A grid of equally sized images, row by row, with an optional wrapped label on the left of each row (one row per
prompt in ``python -m multimodal.generate`` and ``multimodal.evaluation.generation``)."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

__all__ = ["make_grid"]


def make_grid(
    images: list[Image.Image], *, columns: int, pad: int = 2, labels: Sequence[str] | None = None
) -> Image.Image:
    """Tile equally sized images row by row, ``columns`` per row, on a white background; with ``labels`` (one per
    row), each row's label is written, wrapped, in a column on its left."""
    w, h = images[0].size
    rows = -(-len(images) // columns)
    if labels is not None and len(labels) != rows:
        raise ValueError(f"{len(labels)} labels for {rows} rows")
    font = _font(max(10, min(16, h // 4)))
    lines = [_wrap(label, font, LABEL_WIDTH) for label in labels] if labels is not None else []
    left = max((_text_width(line, font) for row in lines for line in row), default=0)
    left = left + 2 * pad if left else 0
    grid = Image.new("RGB", (left + columns * (w + pad) + pad, rows * (h + pad) + pad), (255, 255, 255))
    for i, im in enumerate(images):
        grid.paste(im, (left + pad + (i % columns) * (w + pad), pad + (i // columns) * (h + pad)))
    draw = ImageDraw.Draw(grid)
    line_height = _line_height(font)
    for row, text in enumerate(lines):
        top = pad + row * (h + pad) + max(0, (h - line_height * len(text)) // 2)
        for k, line in enumerate(text):
            draw.text((pad, top + k * line_height), line, fill=(0, 0, 0), font=font)
    return grid


LABEL_WIDTH = 200  # pixels a grid's prompt labels wrap at


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's own font (no system fonts needed): scalable with FreeType, its small bitmap font without."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _text_width(text: str, font) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(right - left)


def _line_height(font) -> int:
    _, top, _, bottom = font.getbbox("Ag")
    return int(bottom - top) + 4


def _wrap(text: str, font, width: int) -> list[str]:
    """Greedy word wrap at ``width`` pixels (a single word wider than that stays whole)."""
    lines: list[str] = []
    for word in text.split():
        if lines and _text_width(f"{lines[-1]} {word}", font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines
