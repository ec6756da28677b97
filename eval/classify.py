"""Evaluate an image classifier: ``python -m eval.classify --checkpoint RUN --dataset shapes``.

Prints top-1, top-5 and mean per-class recall as a table and writes them as JSON.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from multimodal.config import ConfigError

from .common import add_common_options, base_parser, load_run_model, read_run_data, run_cli, run_decoder, write_result

__all__ = ["format_table", "main"]


def format_table(rows: dict[str, Any]) -> str:
    width = max(len(k) for k in rows)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    for key, value in rows.items():
        lines.append(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from torch import nn

    from multimodal.data import ensure_dataset, make_loader
    from multimodal.evaluation import eval_stream, evaluate_classifier

    data, card = read_run_data(args, "classification")
    label = args.label or data.get("label") or next(iter(card.labels))
    classes = card.class_names(label)
    ensure_dataset(card)
    model, acc = load_run_model(args)
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear) and head.out_features != len(classes):
        raise ConfigError(
            f"the model predicts {head.out_features} classes but {card.name}:{label} has {len(classes)}; "
            "pass the --dataset and --label the model was trained on"
        )
    decoder = run_decoder(data, label_key="cls" if card.format == "folder" else label, image_key=card.image_key)
    stream = eval_stream(
        card,
        args.split,
        decoder=decoder,
        batch_size=args.batch_size,
        rank=acc.process_index,
        world_size=acc.num_processes,
    )
    metrics, skips = evaluate_classifier(
        model,
        make_loader(stream, num_workers=args.workers),
        num_classes=len(classes),
        acc=acc,
        progress=acc.is_main_process,
    )
    result = {"checkpoint": str(args.checkpoint), "dataset": card.name, "split": args.split, "label": label}
    result.update(metrics)
    result["skipped_samples"] = skips.total
    table = format_table({k: v for k, v in result.items() if k not in ("checkpoint",)})
    write_result(args, f"classify_{card.name}_{args.split}.json", result, table=table, acc=acc)
    if skips.total and acc.is_main_process:
        print(skips.summary())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(
        "python -m eval.classify",
        __doc__,
        split="split to evaluate",
        label="label key of the card (default: the one trained on)",
    )
    add_common_options(parser, no_ema=True, out="RUN/eval/classify_<dataset>_<split>.json")
    return run_cli(run, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
