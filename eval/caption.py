"""Caption images with a GATO run and judge them: ``python -m eval.caption --checkpoint RUN [--split test]``.

A caption is right when the (colour, shape) pairs it names include the image's main object and name nothing that
is not in the image (``multimodal.pipelines.gato.judge_caption``). Captions are greedy. Prints the accuracy, the
share with the main object's colour right and its shape right, and a few examples; writes them as JSON.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from multimodal.config import ConfigError

from .common import add_common_options, add_task_option, cli_parser, load_gato_run, run_cli, task_route, write_result

__all__ = ["main"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from multimodal.data import ensure_dataset, load_card
    from multimodal.evaluation import evaluate_captioning

    cfg, model, tokenizer = load_gato_run(args)
    data = cfg.get("data") or {}
    mixture = (cfg.get("task") or {}).get("mixture") or {}
    name = args.dataset or next((n for n in mixture if load_card(n).generator != "control"), None)
    if name is None:
        raise ConfigError(f"the run at {args.checkpoint} trained on no captioned dataset; pass --dataset")
    card = load_card(name)
    ensure_dataset(card)
    results = {}
    print(f"{'split':8s} {'caption acc':>11s} {'colour':>7s} {'shape':>7s} {'n':>6s}")
    for split in args.split or ["test"]:
        out, skips = evaluate_captioning(
            model, tokenizer, card, split, samples=args.samples, image_size=int(data.get("image_size", 64)),
            task=task_route(model, card.name, args.task),
        )  # fmt: skip
        print(f"{split:8s} {out['accuracy']:11.4f} {out['colour_named']:7.4f} {out['shape_named']:7.4f} {out['n']:6d}")
        for example in out["examples"][:3]:
            print(
                f"  {example['key']}: {example['caption']!r} (objects {example['objects']}, right={example['right']})"
            )
        if skips.total:
            print(skips.summary())
        results[split] = out
    result = {"checkpoint": str(args.checkpoint), "dataset": card.name, "results": results}
    write_result(args, f"caption_{card.name}.json", result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = cli_parser("python -m eval.caption", __doc__, "GATO run directory or checkpoints/step-* folder")
    parser.add_argument("--dataset", help="captioned dataset card (default: the run's captioned dataset)")
    parser.add_argument("--split", action="append", help="split to caption (repeatable; default: test)")
    parser.add_argument("--samples", type=int, default=1000, help="images per split")
    add_task_option(parser)
    add_common_options(parser, no_ema=True, device="torch device to caption on", out="RUN/eval/caption_<dataset>.json")
    return run_cli(run, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
