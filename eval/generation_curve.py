"""Prompt accuracy against training minutes: ``python -m eval.generation_curve --checkpoint RUN --judge CLASSIFIER``.

Evaluates the unCLIP stack of run root RUN (``prior/``, ``decoder/``, ``upsampler/``) once per kept decoder
checkpoint (``decoder/checkpoints/step-*``), with the final prior and upsampler, as ``eval.generation`` does. The
minutes of a point are the whole stack's training wall time up to it: the CLIP's, the prior's and the upsampler's
runs in full plus the decoder's time up to that checkpoint (each from its ``results.json`` or the checkpoint's
``state.json``). Writes ``RUN/eval/curve.json``, a plot ``RUN/eval/curve.png`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from multimodal.config import ConfigError

from .common import add_common_options, cli_parser, run_cli, write_result
from .generation import add_judging_options, load_judge
from .plot import PALETTE, Series, line_plot

__all__ = ["main", "plot_curve"]


def _wall_seconds(run: Path) -> float:
    path = run / "results.json"
    if not path.is_file():
        raise ConfigError(f"{run} has no results.json: the run has not finished")
    return float(json.loads(path.read_text())["wall_seconds"])


def plot_curve(points: list[dict[str, Any]], path: Path, *, goal: float | None = 0.8) -> None:
    """A line plot of seen and held-out prompt accuracy against the stack's training minutes."""
    series = [Series(key, [(p["minutes"], p[key]) for p in points], color) for key, color in
              (("seen", PALETTE[0]), ("heldout", PALETTE[1]))]  # fmt: skip
    title = "prompt accuracy (colour and shape right, judged by a classifier)"
    goals = () if goal is None else (goal,)
    line_plot(series, path, title=title, x_label="training minutes (whole stack)", goals=goals, legend=False)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from multimodal.evaluation import evaluate_generation
    from multimodal.generate import load_pipeline
    from multimodal.runs import read_run_config

    root = Path(args.checkpoint)
    clip = Path(read_run_config(root / "prior").get("task", {}).get("clip", ""))
    fixed = {name: _wall_seconds(run) for name, run in
             (("clip", clip), ("prior", root / "prior"), ("upsampler", root / "upsampler"))}  # fmt: skip
    decoders = sorted((root / "decoder" / "checkpoints").glob("step-*"))
    if not decoders:
        raise ConfigError(f"{root / 'decoder'} keeps no checkpoints to evaluate")
    device = torch.device(args.device)
    judge = load_judge(args.judge, device=device)
    points = []
    for folder in decoders:
        state = json.loads((folder / "state.json").read_text())
        if "seconds" not in state:
            raise ConfigError(f"{folder}/state.json records no training seconds (written by an older trainer)")
        pipe = load_pipeline(root, decoder=folder).to(device)
        result = evaluate_generation(pipe, judge, n=args.n, steps=args.steps, ablation=False, seed=args.seed)
        minutes = (sum(fixed.values()) + state["seconds"]) / 60
        points.append({
            "decoder_step": state["step"],
            "minutes": round(minutes, 1),
            "seen": result["prior"]["seen"]["prompt_accuracy"],
            "heldout": result["prior"]["heldout"]["prompt_accuracy"],
            "seen_color": result["prior"]["seen"]["color_accuracy"],
            "seen_shape": result["prior"]["seen"]["shape_accuracy"],
        })  # fmt: skip
        print(f"decoder step {state['step']}: {points[-1]}", flush=True)
    out = {
        "checkpoint": str(root),
        "judge": [str(run) for run in args.judge],
        "stage_seconds": fixed,
        "points": points,
    }
    write_result(args, "curve.json", out)
    plot_curve(points, root / "eval" / "curve.png")
    print("| decoder step | stack minutes | seen prompt acc | colour | shape | held-out prompt acc |")
    print("|---:|---:|---:|---:|---:|---:|")
    for p in points:
        print(f"| {p['decoder_step']} | {p['minutes']:.1f} | {p['seen']:.4f} | {p['seen_color']:.4f} | "
              f"{p['seen_shape']:.4f} | {p['heldout']:.4f} |")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = cli_parser("python -m eval.generation_curve", __doc__, "unCLIP run root (prior/, decoder/, upsampler/)")
    add_judging_options(parser, n=4, n_help="images per prompt", guidance=False)
    add_common_options(parser, device="torch device to sample on")
    return run_cli(run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
