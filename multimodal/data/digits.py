"""scikit-learn's bundled handwritten digits (1,797 real 8x8 scans) as captioned WebDataset shards.

The data ships inside scikit-learn (``sklearn.datasets.load_digits``), so nothing is downloaded. Images are
stored at their native 8x8 as 8-bit grayscale PNG, ink bright on a black background (sklearn's 0..16 ink
level scaled to 0..255 and rounded); readers convert to RGB and resize. The train/test split is stratified
by label and fixed by ``seed``.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from multimodal.data import shards

FORMAT_VERSION = 1
SPLITS = ("train", "test")
NUM_SAMPLES = 1797
CLASS_NAMES = [str(d) for d in range(10)]
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Caption templates: {d} the digit, {word} its English name.
CAPTIONS = (
    "a handwritten digit {d}",
    "a scan of a handwritten {d}",
    "the number {word}",
    "a low resolution image of the digit {d}",
    "a handwritten {word}",
    "a photo of the number {d}",
)
# Zero-shot prompt templates for classifying with the class names ("{}" is replaced).
PROMPT_TEMPLATES = (
    "a handwritten digit {}.",
    "a scan of a handwritten {}.",
    "a photo of the number {}.",
    "the digit {}.",
)


def _check_test_size(test_size: int) -> None:
    if not 10 <= test_size <= NUM_SAMPLES - 10:
        raise ValueError(f"test_size must be between 10 and {NUM_SAMPLES - 10} so every digit is in both splits")


def split_indices(*, seed: int = 0, test_size: int = 360) -> dict[str, np.ndarray]:
    """Indices into ``load_digits()`` of each split, stratified by label; sorted within a split."""
    from sklearn.datasets import load_digits  # here: scikit-learn takes a second to import
    from sklearn.model_selection import train_test_split

    _check_test_size(test_size)
    labels = load_digits().target
    train, test = train_test_split(np.arange(len(labels)), test_size=test_size, stratify=labels, random_state=seed)
    return {"train": np.sort(train), "test": np.sort(test)}


def to_uint8(image: np.ndarray) -> np.ndarray:
    """sklearn's 0..16 ink levels as 0..255 pixels: round(v * 255 / 16)."""
    return np.rint(np.asarray(image, dtype=np.float64) * (255 / 16)).astype(np.uint8)


def build_manifest(*, seed: int = 0, test_size: int = 360, samples_per_shard: int = 1000) -> dict[str, Any]:
    """The manifest :func:`generate_digits` writes for these arguments, computed without writing anything."""
    _check_test_size(test_size)
    sizes = {"train": NUM_SAMPLES - test_size, "test": test_size}
    splits = {}
    for split, n in sizes.items():
        k = shards.num_shards(n, samples_per_shard)
        splits[split] = {"shards": f"{split}/{shards.shard_pattern(k)}", "num_samples": n, "num_shards": k}
    return {
        "name": "digits",
        "format_version": FORMAT_VERSION,
        "generator": "digits",
        "spec": {"seed": seed, "test_size": test_size, "samples_per_shard": samples_per_shard},
        "image_key": "png",
        "text_key": "txt",
        "image_size": 8,
        "splits": splits,
        "labels": {"label": list(CLASS_NAMES)},
        "templates": list(PROMPT_TEMPLATES),
    }


def _samples(
    split: str, indices: np.ndarray, images: np.ndarray, labels: np.ndarray, seed: int
) -> Iterator[dict[str, Any]]:
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split),)))
    for i, source in enumerate(indices):
        label = int(labels[source])
        caption = CAPTIONS[int(rng.integers(len(CAPTIONS)))].format(d=label, word=NUMBER_WORDS[label])
        buf = io.BytesIO()
        Image.fromarray(to_uint8(images[source])).save(buf, format="PNG", compress_level=6)
        key = f"{split}_{i:06d}"
        meta = {"label": label, "key": key, "split": split, "source_index": int(source), "caption": caption}
        yield {"__key__": key, "png": buf.getvalue(), "txt": caption, "json": meta}


def generate_digits(
    out_dir: Path, *, seed: int = 0, test_size: int = 360, samples_per_shard: int = 1000, progress: bool = False
) -> dict[str, Any]:
    """Write the digits dataset under ``out_dir`` (``train/``, ``test/``, ``manifest.json``); returns the manifest.

    A complete dataset written with the same arguments is left untouched; otherwise the split directories are
    cleared and rewritten. ``progress`` shows a progress bar.
    """
    from sklearn.datasets import load_digits

    out_dir = Path(out_dir)
    manifest = build_manifest(seed=seed, test_size=test_size, samples_per_shard=samples_per_shard)
    existing = shards.read_manifest(out_dir)
    if existing == json.loads(json.dumps(manifest)) and shards.split_files_present(out_dir, existing):
        return existing

    shards.remove_manifest(out_dir)
    data = load_digits()
    for split, indices in split_indices(seed=seed, test_size=test_size).items():
        samples = _samples(split, indices, data.images, data.target, seed)
        samples = tqdm(samples, total=len(indices), desc=f"digits/{split}", unit="img", disable=not progress)
        shards.write_split(out_dir / split, samples, samples_per_shard=samples_per_shard)
    shards.write_manifest(out_dir, manifest)
    return manifest


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m multimodal.data.digits --out data/digits [--seed 0]``."""
    parser = argparse.ArgumentParser(description="Write scikit-learn's digits as captioned WebDataset shards.")
    parser.add_argument("--out", type=Path, default=Path("data/digits"), help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stratified train/test split")
    parser.add_argument("--test-size", type=int, default=360, help="number of test images")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        manifest = generate_digits(
            args.out, seed=args.seed, test_size=args.test_size, samples_per_shard=args.samples_per_shard
        )
    except ValueError as err:
        parser.error(str(err))
    print(f"digits dataset at {args.out} ({time.perf_counter() - start:.1f} s)")
    for split in SPLITS:
        info = manifest["splits"][split]
        print(f"  {split:6s} {info['num_samples']:5d} samples  {info['shards']}")


if __name__ == "__main__":
    main()
