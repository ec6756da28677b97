"""What the evaluation CLIs share: the run's preprocessing, atomic JSON results, and one-line errors
(``multimodal.cli.run_cli``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from multimodal.cli import HelpFormatter, add_threads_argument, run_cli
from multimodal.data import SampleDecoder
from multimodal.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from multimodal.io import atomic_write_json

__all__ = ["base_parser", "run_cli", "run_decoder", "write_result"]


def run_decoder(
    data: dict[str, Any], *, label_key: str | None = None, text_key: str | None = None, image_key: str | None = None
) -> SampleDecoder:
    """The evaluation-time decoder of a run: its image size, mean and std (from ``config.yaml``'s data section);
    ``image_key`` is the card's (``card.image_key``)."""
    return SampleDecoder(
        image_size=int(data.get("image_size", 224)),
        image_key=image_key,
        label_key=label_key,
        text_key=text_key,
        mean=tuple(data.get("mean", IMAGENET_MEAN)),
        std=tuple(data.get("std", IMAGENET_STD)),
    )


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Write ``result`` as JSON through a temporary file and a rename, then say where."""
    atomic_write_json(path, result, indent=2)
    print(f"wrote {path}")


def base_parser(prog: str, doc: str, out_help: str) -> argparse.ArgumentParser:
    """--checkpoint, --dataset, --batch-size, --workers, --out and --threads, common to every evaluation CLI;
    --help shows each option's default."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="run directory or checkpoints/step-* folder")
    parser.add_argument("--dataset", help="card name, card path or image folder (default: the training dataset)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch and process")
    parser.add_argument("--workers", type=int, default=2, help="data-loader worker processes")
    parser.add_argument("--out", help=f"JSON path (default: {out_help})")
    add_threads_argument(parser)
    return parser
