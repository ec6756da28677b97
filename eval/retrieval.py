"""Image-text retrieval with a CLIP run: ``python -m eval.retrieval --checkpoint RUN --dataset NAME --split test``.

Image-to-text and text-to-image recall@1/5/10 over a split's (image, caption) pairs, two ways. ``image_to_text_R@k``
and ``text_to_image_R@k`` count a retrieved caption as correct when its text equals the query image's own caption
(and likewise for images), so identical captions of different images, common in templated data, are not scored as
misses; ``text_retrieval_recall@k`` and ``image_retrieval_recall@k`` are CLIP_benchmark's, where only the image's own
captions count. A CLIP_benchmark folder (``--dataset wds:DIR``) gives each image all its captions (one a line).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from multimodal.data.benchmark import is_benchmark_card

from .common import add_common_options, base_parser, load_run_model, read_run_data, run_cli, run_decoder, write_result

__all__ = ["main"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from multimodal import get_tokenizer
    from multimodal.data import ensure_dataset, make_loader
    from multimodal.evaluation import eval_stream, retrieval_evaluate

    data, card = read_run_data(args, "clip")
    card.split(args.split)
    ensure_dataset(card)
    model, acc = load_run_model(args)
    decoder = run_decoder(
        data, text_key=card.text_key, image_key=card.image_key, caption_lines=is_benchmark_card(card)
    )
    stream = eval_stream(
        card, args.split, decoder=decoder, batch_size=args.batch_size, rank=acc.process_index,
        world_size=acc.num_processes,
    )  # fmt: skip
    tokenizer = get_tokenizer(model)
    metrics = retrieval_evaluate(
        model, tokenizer, make_loader(stream, num_workers=args.workers), acc=acc, progress=acc.is_main_process
    )
    out = {"checkpoint": str(args.checkpoint), "dataset": card.name, "split": args.split, **metrics}
    table = "\n".join(f"{k:<26} {v:.4f}" if isinstance(v, float) else f"{k:<26} {v}" for k, v in out.items())
    write_result(args, f"retrieval_{card.name}_{args.split}.json", out, table=table, acc=acc)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(
        "python -m eval.retrieval", __doc__, split="split of (image, caption) pairs to retrieve among"
    )
    add_common_options(parser, out="RUN/eval/retrieval_<dataset>_<split>.json")
    return run_cli(run, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
