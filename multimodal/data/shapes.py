"""Synthetic captioned shapes: one or two coloured shapes on a neutral background, with template captions.

Everything is a pure function of a :class:`ShapesSpec`: sample ``i`` of split ``s`` is drawn from its own
random stream seeded by ``(seed, s, i)``, so splits are independent, a smaller split is a prefix of a larger
one, and the shards are byte-identical whatever the number of worker processes.

Object 0 is the primary object: it is always in a strictly larger size class than object 1 (when there is
one), the two never overlap, and the class labels (``color``, ``shape``, ``color_shape``) describe it.
The colour-shape pairs in :data:`HELDOUT_COMBOS` never appear in ``train`` or ``test``; the ``heldout``
split shows only held-out pairs as its primary object, for compositional zero-shot tests.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing as mp
import os
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from multimodal.data import shards

FORMAT_VERSION = 2  # 2: several captions per sample (json "captions")
SPLITS = ("train", "test", "heldout")

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 80, 230),
    "yellow": (240, 225, 25),
    "purple": (150, 50, 200),
    "orange": (250, 125, 15),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
# Side of an object's square cell as a fraction of the image side; each draw is jittered by +-4%.
SIZES: dict[str, float] = {"small": 0.24, "medium": 0.36, "large": 0.50}
SIZE_JITTER = 0.04
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
POSITION_PHRASES = {
    "top left": "in the top left",
    "top": "at the top",
    "top right": "in the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "in the bottom left",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right",
}
# Achromatic backgrounds, far from every object colour. "noise" is a light gray per-pixel texture.
BACKGROUNDS: dict[str, tuple[int, int]] = {
    "black": (0, 0),
    "white": (255, 255),
    "gray": (128, 128),
    "dark gray": (60, 60),
    "noise": (165, 225),
}
BACKGROUND_PHRASES = {"noise": "textured"}

# Held-out colour-shape pairs: one per shape and one per colour (a Latin-square diagonal), so every colour and
# every shape is still seen in training with five partners, but never in these pairings.
HELDOUT_COMBOS: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("green", "star"),
    ("blue", "diamond"),
    ("yellow", "cross"),
    ("purple", "circle"),
    ("orange", "square"),
)

# Zero-shot prompt templates for classifying with the class names ("{}" is replaced).
PROMPT_TEMPLATES = (
    "a photo of a {}.",
    "a {}.",
    "a drawing of a {}.",
    "a picture of a {}.",
    "a photo of the {}.",
    "a {} on a plain background.",
)
# Caption templates. p/s: primary/secondary with article ("a red circle"), ps/ss: with size, pp/sp: position
# phrase, rel: where the primary is relative to the secondary, s_bare: secondary without article, bg: background.
ONE_OBJECT_CAPTIONS = (
    "{p}",
    "a photo of {ps}",
    "{ps} {pp}",
    "a photo of {ps} {pp}",
    "{p} on a {bg} background",
    "there is {p} {pp}",
    "a drawing of {p}",
)
TWO_OBJECT_CAPTIONS = (
    "{p} {rel} {s}",
    "{ps} {rel} {ss}",
    "{ss} and {ps}",
    "{p} and {s}",
    "a photo of {p} {rel} {s}",
    "{p} next to a smaller {s_bare}",
    "{ps} {pp} and {ss} {sp}",
)
# Two-object captions that name only the main (primary, larger) subject, as alt text usually does. Without them
# a two-object image only ever meets two-object captions, and a single-object prompt ("a photo of a red circle")
# matches its primary object no better than the wrong shapes: a CLIP trained on the other captions alone reaches
# 0.99 zero-shot top-1 on one-object test images but 0.62 on two-object ones.
SUBJECT_CAPTIONS = (
    "{ps}",
    "a photo of {p}",
    "{ps} {pp}",
    "{p} and something smaller",
)

_SUPERSAMPLE = 4
_MARGIN = 0.02  # minimum distance between an object's cell and the image border, as a fraction of the side
_GAP = 0.02  # minimum distance between the cells of two objects
_TASKS = ("color", "shape", "color_shape")


@dataclass(frozen=True)
class ShapesSpec:
    """Everything that determines a generated shapes dataset."""

    seed: int = 0
    image_size: int = 64
    train: int = 20000
    test: int = 2000
    heldout: int = 1000
    samples_per_shard: int = 1000
    two_object_prob: float = 0.5
    captions_per_image: int = 5  # distinct captions per sample (json "captions"); the first is also the .txt

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ValueError(
                f"image_size must be >= 16 pixels for the shapes to be recognisable, got {self.image_size}"
            )
        for split in SPLITS:
            if getattr(self, split) < 1:
                raise ValueError(f"split size {split}={getattr(self, split)} must be >= 1")
        if self.samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {self.samples_per_shard}")
        if not 1 <= self.captions_per_image <= len(ONE_OBJECT_CAPTIONS):
            raise ValueError(
                f"captions_per_image must be in [1, {len(ONE_OBJECT_CAPTIONS)}] (the number of one-object caption "
                f"templates), got {self.captions_per_image}"
            )
        if not 0.0 <= self.two_object_prob <= 1.0:
            raise ValueError(f"two_object_prob must be in [0, 1], got {self.two_object_prob}")

    def split_size(self, split: str) -> int:
        """Number of samples in ``split``."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return getattr(self, split)


def class_names(task: str) -> list[str]:
    """Class names of ``task`` ("color", "shape" or "color_shape") in label-index order.

    Colour-shape classes cover every pair, held-out ones included, colour-major: index = color * len(SHAPES) + shape.
    """
    if task == "color":
        return list(COLORS)
    if task == "shape":
        return list(SHAPES)
    if task == "color_shape":
        return [f"{color} {shape}" for color in COLORS for shape in SHAPES]
    raise ValueError(f"unknown task {task!r}; expected one of {_TASKS}")


def build_manifest(spec: ShapesSpec = ShapesSpec()) -> dict[str, Any]:
    """The manifest :func:`generate_shapes` writes for ``spec``, computed without rendering anything."""
    splits = {}
    for split in SPLITS:
        n = spec.split_size(split)
        k = shards.num_shards(n, spec.samples_per_shard)
        splits[split] = {"shards": f"{split}/{shards.shard_pattern(k)}", "num_samples": n, "num_shards": k}
    return {
        "name": "shapes",
        "format_version": FORMAT_VERSION,
        "generator": "shapes",
        "spec": asdict(spec),
        "image_key": "png",
        "text_key": "txt",
        "captions_key": "captions",
        "splits": splits,
        "labels": {task: class_names(task) for task in ("color_shape", "color", "shape")},
        "heldout_combos": [list(combo) for combo in HELDOUT_COMBOS],
        "templates": list(PROMPT_TEMPLATES),
        "colors": {name: list(rgb) for name, rgb in COLORS.items()},
        "backgrounds": list(BACKGROUNDS),
        "sizes": list(SIZES),
        "positions": list(POSITIONS),
    }


# ---------------------------------------------------------------------------------------------- geometry


def _unit_outline(shape: str) -> list[tuple[float, float]]:
    """Polygon of ``shape`` inside the unit cell, centred on (0.5, 0.5); empty for the circle."""
    if shape == "circle":
        return []
    if shape == "square":
        points = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
    elif shape == "triangle":
        points = [(0.5, 0.0), (1.0, math.sqrt(3) / 2), (0.0, math.sqrt(3) / 2)]
    elif shape == "star":
        points = []
        for i in range(10):
            radius = 0.5 if i % 2 == 0 else 0.5 * 0.45
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((0.5 + radius * math.cos(angle), 0.5 + radius * math.sin(angle)))
    elif shape == "diamond":
        points = [(0.5, 0.0), (0.85, 0.5), (0.5, 1.0), (0.15, 0.5)]
    elif shape == "cross":
        a, b = 0.32, 0.68
        points = [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b), (0, a), (a, a)]
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    dx, dy = 0.5 - (min(xs) + max(xs)) / 2, 0.5 - (min(ys) + max(ys)) / 2
    return [(x + dx, y + dy) for x, y in points]


_OUTLINES = {shape: _unit_outline(shape) for shape in SHAPES}
_EXTENTS = {  # (x0, y0, x1, y1) of each outline within the unit cell
    shape: (0.0, 0.0, 1.0, 1.0)
    if not pts
    else (min(p[0] for p in pts), min(p[1] for p in pts), max(p[0] for p in pts), max(p[1] for p in pts))
    for shape, pts in _OUTLINES.items()
}


@dataclass(frozen=True)
class _Object:
    color: str
    shape: str
    size: str
    cx: float  # centre and cell side, as fractions of the image side
    cy: float
    side: float

    @property
    def position(self) -> str:
        col, row = min(int(self.cx * 3), 2), min(int(self.cy * 3), 2)
        return POSITIONS[3 * row + col]

    def bbox(self, image_size: int) -> list[float]:
        """Pixel box [x0, y0, x1, y1] of the drawn outline."""
        ex = _EXTENTS[self.shape]
        x0, y0 = self.cx - self.side / 2, self.cy - self.side / 2
        box = (x0 + ex[0] * self.side, y0 + ex[1] * self.side, x0 + ex[2] * self.side, y0 + ex[3] * self.side)
        return [round(v * image_size, 2) for v in box]


def _separated(a: _Object, b: _Object) -> bool:
    gap_x = abs(a.cx - b.cx) - (a.side + b.side) / 2
    gap_y = abs(a.cy - b.cy) - (a.side + b.side) / 2
    return max(gap_x, gap_y) >= _GAP


def _place(rng: np.random.Generator, side: float) -> tuple[float, float]:
    """A centre in a uniformly chosen one of the nine regions, keeping the cell inside the image."""
    region = int(rng.integers(9))
    lo_limit, hi_limit = side / 2 + _MARGIN, 1 - side / 2 - _MARGIN
    centre = []
    for third in (region % 3, region // 3):
        lo, hi = max(third / 3, lo_limit), min((third + 1) / 3, hi_limit)
        centre.append(float(rng.uniform(lo, hi)))
    return centre[0], centre[1]


def _side(rng: np.random.Generator, size: str) -> float:
    return SIZES[size] * float(rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER))


def _sample_objects(rng: np.random.Generator, split: str, two_object_prob: float) -> list[_Object]:
    allowed = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in HELDOUT_COMBOS]
    primary_pool = list(HELDOUT_COMBOS) if split == "heldout" else allowed
    color, shape = primary_pool[int(rng.integers(len(primary_pool)))]
    size_names = list(SIZES)
    if rng.random() >= two_object_prob:
        size = size_names[int(rng.integers(3))]
        side = _side(rng, size)
        return [_Object(color, shape, size, *_place(rng, side), side)]

    others = [combo for combo in allowed if combo != (color, shape)]
    color1, shape1 = others[int(rng.integers(len(others)))]
    size_index = int(rng.integers(1, 3))
    size, size1 = size_names[size_index], size_names[int(rng.integers(size_index))]
    side, side1 = _side(rng, size), _side(rng, size1)
    for _ in range(64):
        primary = _Object(color, shape, size, *_place(rng, side), side)
        for _ in range(8):
            secondary = _Object(color1, shape1, size1, *_place(rng, side1), side1)
            if _separated(primary, secondary):
                return [primary, secondary]
    # Opposite corners always fit: the two largest cells plus margins and gap are < 1.
    primary = _Object(color, shape, size, side / 2 + _MARGIN, side / 2 + _MARGIN, side)
    secondary = _Object(color1, shape1, size1, 1 - side1 / 2 - _MARGIN, 1 - side1 / 2 - _MARGIN, side1)
    return [primary, secondary]


# ---------------------------------------------------------------------------------------------- rendering


def _coverage(obj: _Object, image_size: int) -> tuple[int, int, np.ndarray]:
    """Anti-aliased coverage (0..255) of ``obj`` over its pixel window; returns (x0, y0, alpha)."""
    s = image_size
    half = obj.side / 2
    x0, y0 = max(math.floor((obj.cx - half) * s), 0), max(math.floor((obj.cy - half) * s), 0)
    x1, y1 = min(math.ceil((obj.cx + half) * s), s), min(math.ceil((obj.cy + half) * s), s)
    k = _SUPERSAMPLE
    mask = Image.new("L", ((x1 - x0) * k, (y1 - y0) * k), 0)
    draw = ImageDraw.Draw(mask)
    left, top, side = ((obj.cx - half) * s - x0) * k, ((obj.cy - half) * s - y0) * k, obj.side * s * k
    if obj.shape == "circle":
        draw.ellipse([left, top, left + side, top + side], fill=255)
    else:
        draw.polygon([(left + u * side, top + v * side) for u, v in _OUTLINES[obj.shape]], fill=255)
    alpha = mask.resize((x1 - x0, y1 - y0), Image.Resampling.BOX)
    return x0, y0, np.asarray(alpha, dtype=np.int32)


def _render(rng: np.random.Generator, background: str, objects: list[_Object], image_size: int) -> np.ndarray:
    lo, hi = BACKGROUNDS[background]
    if lo == hi:
        gray = np.full((image_size, image_size), lo, dtype=np.int32)
    else:
        cells = rng.integers(lo, hi + 1, size=((image_size + 1) // 2, (image_size + 1) // 2), dtype=np.int32)
        gray = cells.repeat(2, axis=0).repeat(2, axis=1)[:image_size, :image_size]  # 2x2-pixel grain
    img = np.repeat(gray[:, :, None], 3, axis=2)  # (S, S, 3)
    for obj in reversed(objects):  # primary last, on top
        x0, y0, alpha = _coverage(obj, image_size)
        a = alpha[:, :, None]  # (h, w, 1)
        region = img[y0 : y0 + a.shape[0], x0 : x0 + a.shape[1]]
        color = np.asarray(COLORS[obj.color], dtype=np.int32)
        region[:] = (region * (255 - a) + color * a + 127) // 255
    return img.astype(np.uint8)


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _captions(rng: np.random.Generator, objects: list[_Object], background: str, count: int) -> list[str]:
    """``count`` captions of the image from distinct templates, in random order."""
    p = objects[0]
    fields_ = {
        "p": _with_article(f"{p.color} {p.shape}"),
        "ps": _with_article(f"{p.size} {p.color} {p.shape}"),
        "pp": POSITION_PHRASES[p.position],
        "bg": BACKGROUND_PHRASES.get(background, background),
    }
    if len(objects) == 1:
        templates = ONE_OBJECT_CAPTIONS
    else:
        s = objects[1]
        dx, dy = p.cx - s.cx, p.cy - s.cy
        if abs(dy) >= abs(dx):
            rel = "above" if dy < 0 else "below"
        else:
            rel = "to the left of" if dx < 0 else "to the right of"
        fields_ |= {
            "s": _with_article(f"{s.color} {s.shape}"),
            "ss": _with_article(f"{s.size} {s.color} {s.shape}"),
            "sp": POSITION_PHRASES[s.position],
            "s_bare": f"{s.color} {s.shape}",
            "rel": rel,
        }
        templates = TWO_OBJECT_CAPTIONS + SUBJECT_CAPTIONS
    chosen = rng.choice(len(templates), size=count, replace=False)
    return [templates[int(i)].format(**fields_) for i in chosen]


def _sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(zlib.crc32(split.encode()), index)))


def make_sample(spec: ShapesSpec, split: str, index: int) -> dict[str, Any]:
    """Sample ``index`` of ``split``: ``{"__key__", "png", "txt", "json"}``, a pure function of its arguments."""
    spec.split_size(split)
    rng = _sample_rng(spec.seed, split, index)
    objects = _sample_objects(rng, split, spec.two_object_prob)
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    pixels = _render(rng, background, objects, spec.image_size)
    captions = _captions(rng, objects, background, spec.captions_per_image)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=6)
    key = f"{split}_{index:06d}"
    p = objects[0]
    color, shape = list(COLORS).index(p.color), SHAPES.index(p.shape)
    labels = {
        "color": color,
        "shape": shape,
        "color_shape": color * len(SHAPES) + shape,
        "objects": [
            {
                "color": o.color,
                "shape": o.shape,
                "size": o.size,
                "position": o.position,
                "bbox": o.bbox(spec.image_size),
            }
            for o in objects
        ],
        "background": background,
        "caption": captions[0],
        "captions": captions,
        "key": key,
        "split": split,
    }
    return {"__key__": key, "png": buf.getvalue(), "txt": captions[0], "json": labels}


# ---------------------------------------------------------------------------------------------- generation


def _write_shard(job: tuple[Path, ShapesSpec, str, int, int]) -> int:
    path, spec, split, start, stop = job
    return shards.write_shard(path, (make_sample(spec, split, i) for i in range(start, stop)))


def _pool_context() -> mp.context.BaseContext:
    # fork is fastest and needs no re-import of the caller's __main__; elsewhere fall back to spawn.
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def generate_shapes(
    out_dir: Path, spec: ShapesSpec = ShapesSpec(), *, workers: int | None = None, progress: bool = False
) -> dict[str, Any]:
    """Write the shapes dataset of ``spec`` under ``out_dir`` (``train/``, ``test/``, ``heldout/``, manifest).

    Returns the manifest. A complete dataset of the same spec is left untouched; anything else in the split
    directories (another spec, a crashed run) is removed and regenerated. ``workers`` processes render shards
    in parallel (default: the CPU count); the output does not depend on it.
    """
    out_dir = Path(out_dir)
    manifest = build_manifest(spec)
    existing = shards.read_manifest(out_dir)
    if existing == json.loads(json.dumps(manifest)) and shards.split_files_present(out_dir, existing):
        return existing

    shards.remove_manifest(out_dir)
    jobs = []
    for split in SPLITS:
        shards.clear_split(out_dir / split)
        n = spec.split_size(split)
        for k in range(manifest["splits"][split]["num_shards"]):
            start = k * spec.samples_per_shard
            stop = min(start + spec.samples_per_shard, n)
            jobs.append((out_dir / split / shards.shard_name(k), spec, split, start, stop))

    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1 (or None for the CPU count), got {workers}")
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    total = sum(spec.split_size(split) for split in SPLITS)
    with ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=total, desc="shapes", unit="img", disable=not progress))
        if workers == 1:
            results = map(_write_shard, jobs)
        else:
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()))
            results = pool.map(_write_shard, jobs)
        for count in results:
            bar.update(count)
    shards.write_manifest(out_dir, manifest)
    return manifest


def write_shapes_card(root: Path, spec: ShapesSpec, name: str, *, workers: int = 1) -> Path:
    """Generate the shapes data of ``spec`` under ``root/data`` and write a card for it, ``root/<name>.yaml`` (the
    shapes card's keys, this data's splits); returns the card's path."""
    from .cards import find_cards_dir  # here: cards imports webdataset, and so torch

    manifest = generate_shapes(root / "data", spec, workers=workers)
    card = yaml.safe_load((find_cards_dir() / "shapes.yaml").read_text())
    card.update(name=name, generator=None, root=str(root / "data"))
    card["splits"] = {
        split: {"shards": info["shards"], "num_samples": info["num_samples"]}
        for split, info in manifest["splits"].items()
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(card))
    return path


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m multimodal.data.shapes --out data/shapes [--seed 0] [--train N] ...``."""
    default = ShapesSpec()
    parser = argparse.ArgumentParser(description="Generate the synthetic captioned-shapes WebDataset.")
    parser.add_argument("--out", type=Path, default=Path("data/shapes"), help="output directory")
    for f in fields(ShapesSpec):
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, type=type(getattr(default, f.name)), default=getattr(default, f.name))
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        spec = ShapesSpec(**{f.name: getattr(args, f.name) for f in fields(ShapesSpec)})
    except ValueError as err:
        parser.error(str(err))
    start = time.perf_counter()
    manifest = generate_shapes(args.out, spec, workers=args.workers, progress=not args.quiet)
    elapsed = time.perf_counter() - start
    print(f"shapes dataset at {args.out} ({elapsed:.1f} s)")
    for split in SPLITS:
        info = manifest["splits"][split]
        print(f"  {split:8s} {info['num_samples']:7d} samples  {info['shards']}")
    print(f"  classes: {len(manifest['labels']['color_shape'])} colour-shape, held out: ", end="")
    print(", ".join(f"{c} {s}" for c, s in manifest["heldout_combos"]))


if __name__ == "__main__":
    main()
