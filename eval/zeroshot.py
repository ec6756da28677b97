"""Zero-shot classification with a CLIP run: ``python -m eval.zeroshot --checkpoint RUN --dataset NAME|CARD|FOLDER``.

Class names and prompt templates come from the dataset card, or from the files of a CLIP_benchmark folder
(``--dataset wds:DIR``, see ``multimodal.data.benchmark``); an ImageNet folder (1,000 WordNet-id class folders) gets
open_clip's ImageNet class names and the 80 OpenAI templates. Prints top-1, top-5 (top-k with k < 5 classes) and mean
per-class recall for each split beside chance level, and writes them as JSON; they are CLIP_benchmark's acc1, acc5 and
mean_per_class_recall.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from multimodal.config import ConfigError

from .common import add_common_options, base_parser, load_run_model, read_run_data, run_cli, run_decoder, write_result

if TYPE_CHECKING:
    from multimodal.data import DatasetCard

__all__ = ["format_results", "main"]


def format_results(results: dict[str, dict[str, float]], title: str) -> str:
    """A table of per-split results; its top-k column is named by the JSON key (``top3`` with three classes)."""
    from multimodal.evaluation import topk_key

    k = topk_key(next(iter(results.values()), {}))
    lines = [title, f"{'split':<10} {'top1':>7} {'(chance)':>9} {k:>7} {'(chance)':>9} {'mpcr':>7} {'n':>6}"]
    for split, m in results.items():
        lines.append(
            f"{split:<10} {m['top1']:>7.4f} {m['chance_top1']:>9.4f} {m[k]:>7.4f} {m[f'chance_{k}']:>9.4f} "
            f"{m['mean_per_class_recall']:>7.4f} {m['num_samples']:>6}"
        )
    return "\n".join(lines)


def default_splits(card: DatasetCard) -> list[str]:
    """Every split but the training one (shapes: test and heldout)."""
    splits = [s for s in card.splits if s not in ("train", "all")]
    return splits or list(card.splits)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from multimodal import get_tokenizer
    from multimodal.data import ensure_dataset
    from multimodal.evaluation import zeroshot_evaluate

    data, card = read_run_data(args, "clip")
    trained = data.get("label")
    label = args.label or (trained if trained in card.labels else next(iter(card.labels), None))
    if label is None:
        raise ConfigError(f"dataset {card.name!r} has no labels to classify")
    splits = args.split or default_splits(card)
    for split in splits:
        card.split(split)
    ensure_dataset(card)
    model, acc = load_run_model(args)
    tokenizer = get_tokenizer(model)
    decoder = run_decoder(data, label_key="cls" if card.format == "folder" else label, image_key=card.image_key)
    results = zeroshot_evaluate(
        model, tokenizer, card, splits=splits, label=label, decoder=decoder, acc=acc,
        batch_size=args.batch_size, num_workers=args.workers, templates=args.templates,
    )  # fmt: skip
    out = {"checkpoint": str(args.checkpoint), "dataset": card.name, "label": label, "splits": results}
    table = format_results(results, f"zero-shot {card.name}:{label} ({len(card.class_names(label))} classes)")
    write_result(args, f"zeroshot_{card.name}.json", out, table=table, acc=acc)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(
        "python -m eval.zeroshot", __doc__, split="split to evaluate (repeatable; default: all but train)",
        label="label key of the card (default: the run's data.label, else the first)", every_split=True,
    )  # fmt: skip
    parser.add_argument("--templates", help="'openai' (80 ImageNet templates) or 'simple' (default: the card's)")
    add_common_options(parser, no_ema=True, out="RUN/eval/zeroshot_<dataset>.json")
    return run_cli(run, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
