"""Image-text retrieval with a CLIP run: ``python -m eval.retrieval --checkpoint RUN --dataset NAME --split test``.

Image-to-text and text-to-image recall@1/5/10 over a split's (image, caption) pairs. A retrieved caption counts
as correct when its text equals the query image's own caption (and likewise for images), so identical captions
of different images, common in templated data, are not scored as misses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from multimodal import load_checkpoint
from multimodal.checkpoint import read_run_config
from multimodal.data import load_card, make_loader
from multimodal.data.cards import ensure_dataset
from multimodal.evaluation import eval_stream, retrieval_evaluate

from .common import base_parser, run_cli, run_decoder, write_result

__all__ = ["main"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from multimodal.tokenizers import ClipTokenizer

    cfg = read_run_config(args.checkpoint, task="clip")
    data = cfg.get("data", {})
    card = load_card(args.dataset or data.get("dataset", "shapes"))
    card.split(args.split)
    ensure_dataset(card)
    acc = Accelerator(cpu=not torch.cuda.is_available())
    model = load_checkpoint(args.checkpoint).to(acc.device)
    decoder = run_decoder(data, text_key=card.text_key, image_key=card.image_key)
    stream = eval_stream(
        card, args.split, decoder=decoder, batch_size=args.batch_size, rank=acc.process_index,
        world_size=acc.num_processes,
    )  # fmt: skip
    tokenizer = ClipTokenizer(context_length=model.cfg.text.context_length)
    metrics = retrieval_evaluate(
        model, tokenizer, make_loader(stream, num_workers=args.workers), acc=acc, progress=acc.is_main_process
    )
    out = {"checkpoint": str(args.checkpoint), "dataset": card.name, "split": args.split, **metrics}
    if acc.is_main_process:
        for key, value in out.items():
            print(f"{key:<22} {value:.4f}" if isinstance(value, float) else f"{key:<22} {value}")
        default = Path(args.checkpoint) / "eval" / f"retrieval_{card.name}_{args.split}.json"
        write_result(Path(args.out) if args.out else default, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("python -m eval.retrieval", __doc__, "RUN/eval/retrieval_<dataset>_<split>.json")
    parser.add_argument("--split", default="test", help="split of (image, caption) pairs to retrieve among")
    return run_cli(run, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
