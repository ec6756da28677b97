"""Where composition fails in an unCLIP stack: ``python -m eval.composition --checkpoint RUN --judge CLASSIFIER``.

The stack draws a held-out colour-shape pair's colour and not its shape. This measures both stages on the pairs seen
in training and on the held-out pairs (``multimodal/evaluation/composition.py``):

- the decoder fed the CLIP image embeddings of ``--n`` real images of each pair (no prior), judged against the real
  images' classes by ``--judge``; the judge on the real images themselves at the decoder's size is the ceiling;
- the prior's embeddings for "a {colour} {shape}", each given the pair of the nearest class mean of real image
  embeddings, with their cosine to their own pair's mean; real embeddings classified the same way (leaving
  themselves out) are the reference.

It ends with a verdict: the stage whose held-out accuracy falls under half its seen-pair accuracy fails to compose.
Results go to ``RUN/eval/composition.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
from typing import Any

from .common import add_common_options, cli_parser, run_cli, write_result
from .generation import add_judging_options, load_judge

__all__ = ["format_table", "main"]

ROWS = (
    ("real_images", "real images, judged"),
    ("decoder_from_real_embeddings", "decoder <- real image embeddings"),
    ("real_embeddings_nearest_class", "real embeddings -> nearest pair"),
    ("prior_nearest_class", "prior embeddings -> nearest pair"),
)


def format_table(results: dict[str, Any]) -> str:
    head = f"{'stage':<34} {'pairs':<8} {'accuracy':>8} {'colour':>7} {'shape':>7} {'cos(own pair)':>13} {'n':>5}"
    lines = [head, "-" * len(head)]
    for key, label in ROWS:
        for kind in ("seen", "heldout"):
            r = results[kind][key]
            cosine = f"{r['cosine_to_own_pair']:>13.4f}" if "cosine_to_own_pair" in r else f"{'':>13}"
            lines.append(
                f"{label:<34} {kind:<8} {r['accuracy']:>8.4f} {r['color_accuracy']:>7.4f} {r['shape_accuracy']:>7.4f} "
                f"{cosine} {r['n']:>5}"
            )
    return "\n".join(lines) + f"\n\nverdict: {results['verdict']}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from multimodal.evaluation import diagnose_composition
    from multimodal.generate import load_pipeline

    device = torch.device(args.device)
    judge = load_judge(args.judge, device=device)  # before the pipeline: a wrong --judge fails at once
    pipe = load_pipeline(args.checkpoint, sampler=args.sampler).to(device)
    results = diagnose_composition(
        pipe, judge, n=args.n, steps=args.steps, prior_guidance=args.prior_guidance,
        decoder_guidance=args.decoder_guidance, seed=args.seed, dataset=args.dataset, upsample=not args.no_upsample,
    )  # fmt: skip
    results.update(
        {"checkpoint": str(args.checkpoint), "judge": [str(run) for run in args.judge], "sampler": args.sampler}
    )
    print(f"composition {args.checkpoint} ({args.sampler}, {args.steps} steps, {args.n} images per pair)")
    write_result(args, "composition.json", results, table=format_table(results))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = cli_parser("python -m eval.composition", __doc__, "saved pipeline folder or unCLIP run root")
    add_judging_options(parser, n=8, n_help="real images (and prior samples) per colour-shape pair", guidance=True)
    parser.add_argument("--dataset", default="shapes", help="a shapes card (its test and heldout splits)")
    parser.add_argument("--no-upsample", action="store_true", help="judge the decoder's images without upsampling")
    add_common_options(parser, device="torch device to sample on", out="CHECKPOINT/eval/composition.json")
    return run_cli(run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
