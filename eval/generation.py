"""Evaluate text-to-image generation on shapes: ``python -m eval.generation --checkpoint RUN --judge CLASSIFIER``.

For every colour-shape pair of the shapes card (the pairs seen in training and the held-out ones, reported apart) it
generates ``--n`` images from the prompt "a {colour} {shape}" and reports:

- prompt accuracy: the share of images whose colour and shape, judged by an independently trained shapes classifier
  (``--judge``, a run of configs/vit/shapes.yaml or configs/vision/*-shapes.yaml, 36 colour-shape classes), match the
  prompt; colour and shape accuracy apart. A 36-way judge never saw the held-out pairs and never predicts them: to
  judge those, pass ``--judge`` twice, a classifier of ``data.label=color`` and one of ``data.label=shape``;
- CLIP score: the cosine of the image's and the prompt's CLIP embeddings (this suite's CLIP, the one the stack was
  trained on), beside the same for real test images and their captions;
- a Frechet distance to real shapes test images in the judge's penultimate feature space, labelled as such (it is not
  Inception FID, which needs weights this machine cannot download; ``--inception FILE`` adds FID with a local
  torchvision Inception-v3 state dict);
- the paper's ablation (section 5.1): the decoder fed the prior's image embedding versus the CLIP text embedding
  directly, same prompts and seeds.

Results go to ``RUN/eval/generation.json`` (or ``--out``) and a grid per condition and split next to it
(``generation-prior-seen.png``: one row per prompt). ``--seed 0,1,2`` repeats the evaluation with each sample seed
and reports every metric as its mean +- sample standard deviation over them (each seed's figures under
``per_seed``; the grids show the first seed).
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from multimodal.config import ConfigError
from multimodal.models.samplers import SAMPLERS

if TYPE_CHECKING:
    import torch

    from multimodal.evaluation import Judge, PairJudge

from .common import add_common_options, cli_parser, result_path, run_cli, write_result

__all__ = ["add_judging_options", "format_table", "load_judge", "main", "seed_list"]


def load_judge(runs: str | Path | Sequence[str | Path], *, device: torch.device | str = "cpu") -> Judge | PairJudge:
    """The judge of ``--judge``: one shapes classifier of the 36 colour-shape classes (a
    :class:`~multimodal.evaluation.Judge`), or two, one of ``color`` and one of ``shape`` (in either order: a
    :class:`~multimodal.evaluation.PairJudge`, which also judges colour-shape pairs no training image shows)."""
    from multimodal.evaluation import Judge, PairJudge
    from multimodal.runs import load_checkpoint, read_run_config

    runs = [runs] if isinstance(runs, (str, Path)) else list(runs)
    judges = {}
    for run in runs:
        data = read_run_config(run, task="classification").get("data", {})
        label = data.get("label")
        if label not in ("color_shape", "color", "shape") or label in judges:
            raise ConfigError(
                f"--judge {run} was trained on label {label!r}; give one color_shape classifier (e.g. a run of "
                "configs/vit/shapes.yaml) or two, one of data.label=color and one of data.label=shape"
            )
        model = load_checkpoint(run, device=device)
        size = int(data.get("image_size", 32))
        judges[label] = Judge(model, image_size=size, mean=data["mean"], std=data["std"], device=device)
    if set(judges) == {"color_shape"}:
        warnings.warn(
            f"--judge {runs[0]} classifies the 36 colour-shape pairs and never saw the held-out ones, so it never "
            "predicts them: held-out prompt accuracy reads 0 whatever the images show; pass --judge twice, a "
            "data.label=color and a data.label=shape classifier, to measure it",
            stacklevel=2,
        )
        return judges["color_shape"]
    if set(judges) == {"color", "shape"}:
        return PairJudge(judges["color"], judges["shape"])
    raise ConfigError(
        f"--judge got classifiers of {sorted(judges)}: give one color_shape classifier, or a color and a shape one"
    )


def seed_list(text: str) -> list[int]:
    """``--seed`` of several seeds: "0" or "0,1,2" -> [0] or [0, 1, 2] (distinct integers)."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give integers, comma-separated, e.g. 0 or 0,1,2") from None
    if len(set(seeds)) < len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r} names a seed twice: give each seed once")
    return seeds


def add_judging_options(
    parser: argparse.ArgumentParser, *, n: int, n_help: str, guidance: bool, several_seeds: bool = False
) -> None:
    """The options of the CLIs that sample an unCLIP stack and judge its images: --judge, --n, --steps, --seed (a
    comma-separated list with ``several_seeds``), and with ``guidance`` --sampler, --prior-guidance and
    --decoder-guidance."""
    parser.add_argument(
        "--judge", required=True, action="append",
        help="run directory of a shapes color_shape classifier, or --judge twice: a color and a shape classifier "
        "(these judge held-out pairs too)",
    )  # fmt: skip
    parser.add_argument("--n", type=int, default=n, help=n_help)
    parser.add_argument("--steps", type=int, default=25, help="denoising steps of each stage")
    if several_seeds:
        parser.add_argument(
            "--seed", type=seed_list, default="0", metavar="SEED[,SEED...]",
            help="random seed of the samples; several, comma-separated, give each metric's mean and standard "
            "deviation over them",
        )  # fmt: skip
    else:
        parser.add_argument("--seed", type=int, default=0, help="random seed of the samples")
    if guidance:
        parser.add_argument("--sampler", choices=SAMPLERS, default="dpmsolver++", help="diffusion sampler")
        parser.add_argument("--prior-guidance", type=float, default=4.0, help="classifier-free guidance of the prior")
        parser.add_argument(
            "--decoder-guidance", type=float, default=3.0, help="classifier-free guidance of the decoder"
        )


def format_table(results: dict[str, Any]) -> str:
    """The results as a table, one row per decoder input and split; means +- standard deviations over several
    seeds."""
    spread = "seeds" in results
    # prompt acc, colour, shape, CLIP score, FD: "0.8420 +- 0.0070" over seeds, "0.8420" for one
    widths = (18,) * 5 if spread else (10, 7, 7, 10, 16)
    names = ("prompt acc", "colour", "shape", "CLIP score", "FD (judge feats)")

    def cell(r: dict[str, Any], key: str, digits: int) -> str:
        return f"{r[key]:.{digits}f}" + (f" +- {r[key + '_std']:.{digits}f}" if f"{key}_std" in r else "")

    def row(first: str, split: str, cells: list[str], n: int | str) -> str:
        return (
            f"{first:<16} {split:<8} " + " ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)) + f" {n:>5}"
        )

    head = row("decoder input", "split", list(names), "n")
    lines = [head, "-" * len(head)]
    keys = ("prompt_accuracy", "color_accuracy", "shape_accuracy", "clip_score")
    for cond in ("prior", "text_embedding"):
        if cond not in results:
            continue
        for split in ("seen", "heldout"):
            r = results[cond][split]
            cells = [cell(r, key, 4) for key in keys] + [cell(r, "fd_judge_features", 2)]
            fid = f"  FID {cell(r, 'fid_inception', 2)}" if "fid_inception" in r else ""
            lines.append(row(cond, split, cells, r["n"]) + fid)
    real = results["real"]
    lines.append(
        row(
            "real test images",
            "test",
            [f"{real['judge_accuracy']:.4f}", "", "", f"{real['clip_score']:.4f}", "0"],
            real["n"],
        )
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from multimodal.evaluation import InceptionFeatures, evaluate_generation, mean_over_seeds
    from multimodal.generate import load_pipeline

    device = torch.device(args.device)
    judge = load_judge(args.judge, device=device)  # before the pipeline: a wrong --judge fails at once
    pipe = load_pipeline(args.checkpoint, sampler=args.sampler, decoder=args.decoder).to(device)
    inception = InceptionFeatures(args.inception, device=device) if args.inception else None
    out = result_path(args, "generation.json")
    per_seed = [
        evaluate_generation(
            pipe, judge, n=args.n, steps=args.steps, prior_guidance=args.prior_guidance,
            decoder_guidance=args.decoder_guidance, seed=seed, ablation=not args.no_ablation, inception=inception,
            grid_dir=out.parent if i == 0 else None, grid_prefix=f"{out.stem}-", dataset=args.dataset,
        )
        for i, seed in enumerate(args.seed)
    ]  # fmt: skip
    results = per_seed[0] if len(per_seed) == 1 else mean_over_seeds(per_seed)
    judge_runs = [str(run) for run in args.judge]
    results.update({"checkpoint": str(args.checkpoint), "decoder": args.decoder, "judge": judge_runs,
                    "sampler": args.sampler})  # fmt: skip
    seeds = (
        f"seed {args.seed[0]}" if len(args.seed) == 1 else f"mean +- std over seeds {','.join(map(str, args.seed))}"
    )
    print(f"generation {args.checkpoint} ({args.sampler}, {args.steps} steps, {args.n} images per prompt, {seeds})")
    write_result(args, "generation.json", results, table=format_table(results))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = cli_parser("python -m eval.generation", __doc__, "saved pipeline folder or unCLIP run root")
    parser.add_argument("--decoder", help="another decoder run or checkpoint folder (with an unCLIP run root)")
    add_judging_options(parser, n=8, n_help="images per prompt", guidance=True, several_seeds=True)
    parser.add_argument("--dataset", default="shapes", help="a shapes card (prompts from its colour-shape classes)")
    parser.add_argument("--no-ablation", action="store_true", help="skip the text-embedding-to-decoder ablation")
    parser.add_argument("--inception", help="a local torchvision inception_v3 state dict: adds Inception FID")
    add_common_options(parser, device="torch device to sample on", out="CHECKPOINT/eval/generation.json")
    return run_cli(run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
