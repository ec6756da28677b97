"""CLIP zero-shot accuracy against batch size, at equal samples seen: does CLIP "work better with very large batch
size" (Radford et al. 2021) on this suite's shapes?

    python bench/clip_batch.py [--batches 32,64,128,256,512,1024,2048] [--samples 153600] [--seeds 0,1,2]
                               [--chunk 256] [--parallel 2] [--out-dir runs/clip-batch] [--plot docs/clip-batch.png]

Every run trains ``--config`` (``configs/clip/shapes.yaml``) on ``--samples`` pairs: batch B for samples / B steps,
with the learning rate scaled by the square-root rule from the recipe's (1e-3 at batch 128: lr = 1e-3 * sqrt(B / 128),
the rule for Adam of Malladi et al. 2022) and the warm-up kept at the recipe's fraction of the steps. A batch larger
than ``--chunk`` is computed exactly through gradient caching (``task.grad_cache_chunks = B / chunk``: the same
gradient as the whole batch at once, in chunk-sized pieces). Each run evaluates zero-shot on the seen-pair test
images and the held-out pairs four times, so the plot also shows accuracy against wall-clock minutes (equal time).
Runs go ``--parallel`` at a time on one thread each; a finished run is reused.

Prints the table (mean and sample standard deviation over the seeds of the final evaluation) and writes
``<out-dir>/clip-batch.json`` and, with ``--plot``, a PNG: accuracy against log2(batch) at equal samples, and
against minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench.* when run as a script

from bench.experts import run_command, train_all
from eval.plot import PALETTE, Series, line_plot
from multimodal.cli import HelpFormatter
from training.train import load_config

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("test", "heldout")


def plan(batch: int, samples: int, *, base_batch: int, base_lr: float, warmup_fraction: float, chunk: int) -> dict:
    """The schedule of one batch size: steps, learning rate (square-root rule), warm-up, gradient-cache chunks."""
    if samples % batch:
        raise SystemExit(f"--samples {samples} is not a multiple of batch {batch}: runs would see unequal samples")
    steps = samples // batch
    if batch > chunk and batch % chunk:
        raise SystemExit(f"batch {batch} is not a multiple of --chunk {chunk}")
    return {
        "batch": batch,
        "steps": steps,
        "lr": base_lr * math.sqrt(batch / base_batch),
        "warmup": max(1, round(steps * warmup_fraction)),
        "chunks": batch // chunk if batch > chunk else 1,
    }


def overrides(p: dict, seed: int) -> list[str]:
    evals = max(1, p["steps"] // 4)
    return [
        f"run.seed={seed}", f"data.batch_size={p['batch']}", f"train.steps={p['steps']}", f"optim.lr={p['lr']:.6g}",
        f"optim.warmup_steps={p['warmup']}", f"task.grad_cache_chunks={p['chunks']}", f"train.eval_every={evals}",
        f"train.checkpoint_every={evals}", "train.log_every=10",
    ]  # fmt: skip


def evaluations(run_dir: Path) -> list[dict]:
    """The run's zero-shot evaluations: step, wall seconds and top-1 of each split."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [
        {"step": r["step"], "seconds": r["time/wall_seconds"], **{s: r[f"eval/{s}_top1"] for s in SPLITS}}
        for r in records
        if "eval/test_top1" in r
    ]


def table(results: dict[int, list[dict]], seeds: list[int]) -> str:
    lines = [
        "| batch | lr | steps | seen top-1 | held-out top-1 | minutes | per seed (seen) |",
        "|---:|---:|---:|---|---|---:|---|",
    ]
    for batch, runs in results.items():
        cells = []
        for split in SPLITS:
            final = [r["evals"][-1][split] for r in runs]
            spread = statistics.stdev(final) if len(final) > 1 else 0.0
            cells.append(f"{statistics.mean(final):.4f} +- {spread:.4f}")
        minutes = statistics.mean(r["evals"][-1]["seconds"] for r in runs) / 60
        seen = ", ".join(f"{r['evals'][-1]['test']:.4f}" for r in runs)
        p = runs[0]["plan"]
        lines.append(f"| {batch} | {p['lr']:.2e} | {p['steps']} | {cells[0]} | {cells[1]} | {minutes:.1f} | {seen} |")
    return "\n".join(lines)


def plot(results: dict[int, list[dict]], path: Path) -> None:
    """Two PNGs: final accuracy against log2(batch) (path), and seen accuracy against minutes (path's -time twin)."""
    by_batch = [
        Series(
            label=f"{'seen' if split == 'test' else 'held-out'} (mean of {len(next(iter(results.values())))} seeds)",
            points=[
                (math.log2(b), statistics.mean(r["evals"][-1][split] for r in runs)) for b, runs in results.items()
            ],
            color=PALETTE[i],
        )
        for i, split in enumerate(SPLITS)
    ]
    line_plot(by_batch, path, title="CLIP zero-shot at equal samples seen", x_label="log2(batch size)")
    by_time = [
        Series(
            label=f"batch {b}",
            points=[(e["seconds"] / 60, e["test"]) for e in runs[0]["evals"]],
            color=PALETTE[i % len(PALETTE)],
            dashed=i >= len(PALETTE),
        )
        for i, (b, runs) in enumerate(results.items())
    ]
    twin = path.with_name(f"{path.stem}-time{path.suffix}")
    line_plot(by_time, twin, title="CLIP zero-shot (seen pairs) against minutes, first seed", x_label="minutes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/clip_batch.py", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "clip" / "shapes.yaml")
    parser.add_argument("--batches", default="32,64,128,256,512,1024,2048", help="batch sizes, comma-separated")
    parser.add_argument("--samples", type=int, default=153_600, help="training pairs every run sees")
    parser.add_argument("--seeds", default="0,1,2", help="run.seed values, comma-separated")
    parser.add_argument("--chunk", type=int, default=256, help="largest batch computed at once (gradient caching)")
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--out-dir", type=Path, default=REPO / "runs" / "clip-batch")
    parser.add_argument("--plot", type=Path, help="write the accuracy plots here (PNG)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of every run, e.g. model.args.text.layers=2")
    args = parser.parse_args(argv)
    try:
        batches = [int(b) for b in args.batches.split(",")]
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error("--batches and --seeds take comma-separated integers")
    if min(batches) < 2 or args.samples < max(batches) or args.chunk < 1 or args.parallel < 1:
        parser.error("batches must be >= 2, --samples at least the largest batch, --chunk and --parallel >= 1")
    cfg = load_config(args.config, args.overrides)
    base = dict(base_batch=cfg.data.batch_size, base_lr=cfg.optim.lr, chunk=args.chunk)
    plans = {
        b: plan(b, args.samples, warmup_fraction=cfg.optim.warmup_steps / cfg.train.steps, **base) for b in batches
    }
    name = lambda b, s: f"clip-b{b}-s{s}"  # noqa: E731
    commands = {
        name(b, s): run_command(name(b, s), args.config, args.out_dir, [*args.overrides, *overrides(plans[b], s)],
                                threads=1)
        for s in seeds for b in batches
    }  # fmt: skip
    train_all(commands, parallel=args.parallel)
    results = {
        b: [{"seed": s, "plan": plans[b], "evals": evaluations(args.out_dir / name(b, s))} for s in seeds]
        for b in batches
    }
    print(f"\nCLIP zero-shot at {args.samples} samples, seeds {seeds}\n\n{table(results, seeds)}")
    out = args.out_dir / "clip-batch.json"
    out.write_text(json.dumps({"samples": args.samples, "seeds": seeds, "results": results}, indent=2))
    print(f"wrote {out}")
    if args.plot is not None:
        plot(results, args.plot)
        print(f"wrote {args.plot} and its -time twin")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
