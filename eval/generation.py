"""Evaluate text-to-image generation on shapes: ``python -m eval.generation --checkpoint RUN --judge CLASSIFIER``.

For every colour-shape pair of the shapes card (the pairs seen in training and the held-out ones, reported apart) it
generates ``--n`` images from the prompt "a {colour} {shape}" and reports:

- prompt accuracy: the share of images whose colour and shape, judged by an independently trained shapes classifier
  (``--judge``, a run of configs/vision/*-shapes.yaml, 36 colour-shape classes), match the prompt; colour and shape
  accuracy apart;
- CLIP score: the cosine of the image's and the prompt's CLIP embeddings (this suite's CLIP, the one the stack was
  trained on), beside the same for real test images and their captions;
- a Frechet distance to real shapes test images in the judge's penultimate feature space, labelled as such (it is not
  Inception FID, which needs weights this machine cannot download; ``--inception FILE`` adds FID with a local
  torchvision Inception-v3 state dict);
- the paper's ablation (section 5.1): the decoder fed the prior's image embedding versus the CLIP text embedding
  directly, same prompts and seeds.

Results go to ``RUN/eval/generation.json`` (or ``--out``) and a grid per condition and split next to it
(``generation-prior-seen.png``: one row per prompt).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from multimodal.config import ConfigError
from multimodal.models.samplers import SAMPLERS

if TYPE_CHECKING:
    import torch

    from multimodal.evaluation import Judge

from .common import add_common_options, cli_parser, result_path, run_cli, write_result

__all__ = ["add_judging_options", "format_table", "load_judge", "main"]


def load_judge(run: str | Path, *, device: torch.device | str = "cpu") -> Judge:
    """The :class:`~multimodal.evaluation.Judge` of ``--judge``: a shapes classifier run (36 colour-shape classes)."""
    from multimodal.evaluation import Judge
    from multimodal.runs import load_checkpoint, read_run_config

    cfg = read_run_config(run, task="classification")
    data = cfg.get("data", {})
    if data.get("label") != "color_shape":
        raise ConfigError(
            f"--judge {run} was trained on label {data.get('label')!r}; it must classify color_shape "
            "(e.g. a run of configs/vision/resnet18-shapes.yaml)"
        )
    model = load_checkpoint(run, device=device)
    return Judge(model, image_size=int(data.get("image_size", 32)), mean=data["mean"], std=data["std"], device=device)


def add_judging_options(parser: argparse.ArgumentParser, *, n: int, n_help: str, guidance: bool) -> None:
    """The options of the CLIs that sample an unCLIP stack and judge its images: --judge, --n, --steps, --seed, and
    with ``guidance`` --sampler, --prior-guidance and --decoder-guidance."""
    parser.add_argument("--judge", required=True, help="run directory of a shapes color_shape classifier")
    parser.add_argument("--n", type=int, default=n, help=n_help)
    parser.add_argument("--steps", type=int, default=25, help="denoising steps of each stage")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the samples")
    if guidance:
        parser.add_argument("--sampler", choices=SAMPLERS, default="dpmsolver++", help="diffusion sampler")
        parser.add_argument("--prior-guidance", type=float, default=4.0, help="classifier-free guidance of the prior")
        parser.add_argument(
            "--decoder-guidance", type=float, default=3.0, help="classifier-free guidance of the decoder"
        )


def format_table(results: dict[str, Any]) -> str:
    head = f"{'decoder input':<16} {'split':<8} {'prompt acc':>10} {'colour':>7} {'shape':>7} {'CLIP score':>10} "
    head += f"{'FD (judge feats)':>16} {'n':>5}"
    lines = [head, "-" * len(head)]
    for cond in ("prior", "text_embedding"):
        if cond not in results:
            continue
        for split in ("seen", "heldout"):
            r = results[cond][split]
            lines.append(
                f"{cond:<16} {split:<8} {r['prompt_accuracy']:>10.4f} {r['color_accuracy']:>7.4f} "
                f"{r['shape_accuracy']:>7.4f} {r['clip_score']:>10.4f} {r['fd_judge_features']:>16.2f} {r['n']:>5}"
                + (f"  FID {r['fid_inception']:.2f}" if "fid_inception" in r else "")
            )
    real = results["real"]
    lines.append(
        f"{'real test images':<16} {'test':<8} {real['judge_accuracy']:>10.4f} {'':>7} {'':>7} "
        f"{real['clip_score']:>10.4f} {'0':>16} {real['n']:>5}"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from multimodal.evaluation import InceptionFeatures, evaluate_generation
    from multimodal.generate import load_pipeline

    device = torch.device(args.device)
    judge = load_judge(args.judge, device=device)  # before the pipeline: a wrong --judge fails at once
    pipe = load_pipeline(args.checkpoint, sampler=args.sampler, decoder=args.decoder).to(device)
    inception = InceptionFeatures(args.inception, device=device) if args.inception else None
    out = result_path(args, "generation.json")
    results = evaluate_generation(
        pipe, judge, n=args.n, steps=args.steps, prior_guidance=args.prior_guidance,
        decoder_guidance=args.decoder_guidance, seed=args.seed, ablation=not args.no_ablation,
        inception=inception, grid_dir=out.parent, grid_prefix=f"{out.stem}-", dataset=args.dataset,
    )  # fmt: skip
    results.update({"checkpoint": str(args.checkpoint), "decoder": args.decoder, "judge": str(args.judge),
                    "sampler": args.sampler})  # fmt: skip
    print(f"generation {args.checkpoint} ({args.sampler}, {args.steps} steps, {args.n} images per prompt)")
    write_result(args, "generation.json", results, table=format_table(results))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = cli_parser("python -m eval.generation", __doc__, "saved pipeline folder or unCLIP run root")
    parser.add_argument("--decoder", help="another decoder run or checkpoint folder (with an unCLIP run root)")
    add_judging_options(parser, n=8, n_help="images per prompt", guidance=True)
    parser.add_argument("--dataset", default="shapes", help="a shapes card (prompts from its colour-shape classes)")
    parser.add_argument("--no-ablation", action="store_true", help="skip the text-embedding-to-decoder ablation")
    parser.add_argument("--inception", help="a local torchvision inception_v3 state dict: adds Inception FID")
    add_common_options(parser, device="torch device to sample on", out="CHECKPOINT/eval/generation.json")
    return run_cli(run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
