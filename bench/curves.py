"""Training curves of several runs side by side, from their ``metrics.jsonl``: loss and evaluation figures.

    python bench/curves.py runs/clip-shapes runs/clip-shapes-bf16 [--every 200] [--metric train/loss]
                           [--eval eval/test_top1 ...] [--plot curves.png] [--label NAME ...] [--goal 0.98 ...]

Each row is a step; the loss column is the mean of the logged values in the window ending there (the logged
loss is one batch's, so it is noisy), and each ``--eval`` column the evaluation logged at that step, if any.
Use it to check that a change (bf16, a new recipe) trains as well as the baseline. ``--plot`` also draws each
``--eval`` metric of each run against the run's wall-clock minutes at that evaluation (``time/wall_seconds``, which
the trainer logs with every evaluation: start-up and evaluations included): one colour per run, solid for the first
metric, dashed for the second.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from eval.plot import PALETTE, Series, line_plot


def read_metrics(run: Path) -> list[dict]:
    """The records of ``run/metrics.jsonl``; a clear error when the run has none."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"{run} has no metrics.jsonl: pass run directories written by training.train")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def window_means(records: list[dict], metric: str, every: int) -> dict[int, float]:
    """Mean of ``metric`` over each window of ``every`` steps, keyed by the window's last step."""
    last = max((r["step"] for r in records), default=0)
    sums: dict[int, list[float]] = {}
    for r in records:
        if metric in r:
            end = min(math.ceil(r["step"] / every) * every, last)  # the last window ends at the last step
            sums.setdefault(end, []).append(r[metric])
    return {step: sum(v) / len(v) for step, v in sums.items()}


def evals(records: list[dict], metric: str) -> dict[int, float]:
    return {r["step"]: r[metric] for r in records if metric in r}


def minutes_curve(records: list[dict], metric: str) -> list[tuple[float, float]]:
    """(wall-clock minutes, value) of each evaluation of ``metric`` that logged its wall time."""
    return [(r["time/wall_seconds"] / 60, r[metric]) for r in records if metric in r and "time/wall_seconds" in r]


def plot(runs: list[Path], records: list[list[dict]], eval_keys: list[str], labels: list[str], args) -> None:
    series = []
    for i, (run, recs, label) in enumerate(zip(runs, records, labels, strict=True)):
        for j, key in enumerate(eval_keys):
            points = minutes_curve(recs, key)
            if not points:
                raise SystemExit(f"{run} logged no {key} with time/wall_seconds: its evaluations predate wall times")
            name = f"{label}: {key.removeprefix('eval/')}"
            series.append(Series(name, points, PALETTE[i % len(PALETTE)], dashed=j % 2 == 1))
    line_plot(series, args.plot, title=args.title, x_label="wall-clock minutes", goals=tuple(args.goal))
    print(f"wrote {args.plot}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--every", type=int, default=200, help="steps per row (loss window)")
    parser.add_argument("--metric", default="train/loss", help="the windowed training metric")
    parser.add_argument("--eval", action="append", default=None, help="evaluation metrics to show (repeatable)")
    parser.add_argument("--plot", type=Path, help="also draw the --eval metrics against wall-clock minutes (PNG)")
    parser.add_argument("--label", action="append", default=None, help="the runs' names in the plot, in order")
    parser.add_argument("--goal", action="append", type=float, default=[], help="a goal line in the plot")
    parser.add_argument("--title", default="zero-shot top-1", help="the plot's title")
    args = parser.parse_args(argv)
    if args.every < 1:
        parser.error("--every must be >= 1")
    if args.label is not None and len(args.label) != len(args.runs):
        parser.error(f"--label given {len(args.label)} times for {len(args.runs)} runs; give one per run or none")
    eval_keys = args.eval or ["eval/test_top1", "eval/heldout_top1"]
    names = [run.name for run in args.runs]
    records = [read_metrics(run) for run in args.runs]
    losses = [window_means(r, args.metric, args.every) for r in records]
    scores = [[evals(r, key) for key in eval_keys] for r in records]
    steps = sorted({s for table in losses for s in table} | {s for run in scores for t in run for s in t})
    header = ["step"] + [f"{n} {args.metric}" for n in names]
    header += [f"{n} {key}" for n in names for key in eval_keys]
    rows = []
    for step in steps:
        row = [str(step)] + [f"{t[step]:.4f}" if step in t else "" for t in losses]
        row += [f"{t[step]:.4f}" if step in t else "" for run in scores for t in run]
        if any(row[1:]):
            rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    out = sys.stdout
    out.write("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |\n")
    out.write("|" + "|".join("-" * (w + 2) for w in widths) + "|\n")
    for row in rows:
        out.write("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |\n")
    if args.plot is not None:
        plot(args.runs, records, eval_keys, args.label or names, args)


if __name__ == "__main__":
    main()
