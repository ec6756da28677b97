"""Train ResNet, AA-ResNet and ViT recipes of matched size for the same steps over several seeds; tabulate.

    python bench/compare_vision.py --dataset shapes [--models resnet18,aa_resnet18,vit] [--seeds 0,1,2]
                                   [--steps N] [--out-dir runs/compare-shapes] [--retrain]

Each (model, seed) trains ``configs/vision/<model>-<dataset>.yaml`` with ``run.seed`` and ``train.steps`` overridden,
in its own ``python -m training.train`` process, under ``--out-dir``. A run that already finished with the same
steps is reused and an interrupted one resumes from its last checkpoint (``--retrain`` starts all afresh), so the
sweep can be stopped and restarted. The table gives parameters, the final test top-1 (mean, sample standard
deviation and each seed), and training throughput (median of the logged samples/s); it is printed as Markdown
and written with the per-run figures to ``<out-dir>/compare.json``. The question it answers is the paper's: does
attention augmentation improve its ResNet (Bello et al. 2019: ResNet-50 76.4 -> 77.7 ImageNet top-1)?
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from multimodal import load_checkpoint
from multimodal.cli import HelpFormatter
from training.train import load_config

REPO = Path(__file__).resolve().parents[1]


def recipe(model: str, dataset: str) -> Path:
    path = REPO / "configs" / "vision" / f"{model}-{dataset}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise SystemExit(f"no recipe {path.relative_to(REPO)}; available: {', '.join(available)}")
    return path


def train_run(model: str, dataset: str, seed: int, steps: int | None, out_dir: Path, retrain: bool) -> Path:
    """Train (or reuse, or resume) one (model, seed) run; returns its run directory."""
    name = f"{model}-{dataset}-s{seed}"
    run_dir = out_dir / name
    overrides = [f"run.name={name}", f"run.out_dir={run_dir}", f"run.seed={seed}", "train.progress=false"]
    if steps is not None:
        overrides.append(f"train.steps={steps}")
    results = run_dir / "results.json"
    target = load_config(recipe(model, dataset), [*overrides, "run.overwrite=true"]).train.steps
    if not retrain and results.is_file() and json.loads(results.read_text()).get("step") == target:
        print(f"{name}: reusing {run_dir}")
        return run_dir
    resume = [] if retrain or not (run_dir / "checkpoints").is_dir() else ["resume=latest"]
    fresh = ["run.overwrite=true"] if not resume else []
    cmd = [sys.executable, "-m", "training.train", str(recipe(model, dataset)), *overrides, *resume, *fresh]
    print(f"{name}: training ({' '.join(cmd[3:])})", flush=True)
    done = subprocess.run(cmd, cwd=REPO, check=False)
    if done.returncode != 0 or not results.is_file():
        raise SystemExit(f"{name} failed (exit {done.returncode}); its log is above")
    return run_dir


def run_figures(run_dir: Path) -> dict[str, Any]:
    """Final top-1, parameters and median training samples/s of a finished run."""
    results = json.loads((run_dir / "results.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["train/samples_per_s"] for r in records if "train/samples_per_s" in r]
    model = load_checkpoint(run_dir)
    return {
        "top1": results["eval/top1"],
        "params": sum(p.numel() for p in model.parameters()),
        "samples_per_s": statistics.median(rates) if rates else float("nan"),
        "wall_seconds": results.get("wall_seconds"),
    }


def summarize(figures: dict[str, list[dict[str, Any]]], seeds: list[int]) -> str:
    """The Markdown table, and a verdict line for every aa_X against its plain twin X."""
    lines = [
        "| model | params | test top-1 mean | std | per seed (" + ", ".join(map(str, seeds)) + ") | train samples/s |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for model, runs in figures.items():
        tops = [r["top1"] for r in runs]
        std = statistics.stdev(tops) if len(tops) > 1 else 0.0
        lines.append(
            f"| {model} | {runs[0]['params'] / 1e6:.3f}M | {statistics.mean(tops):.4f} | {std:.4f} | "
            f"{', '.join(f'{t:.4f}' for t in tops)} | {statistics.median(r['samples_per_s'] for r in runs):.0f} |"
        )
    for model in figures:
        plain = model.removeprefix("aa_")
        if model.startswith("aa_") and plain in figures:
            aa, base = [r["top1"] for r in figures[model]], [r["top1"] for r in figures[plain]]
            diff = round(statistics.mean(aa) - statistics.mean(base), 4) + 0.0  # + 0.0: no "-0.0000"
            separated = min(aa) > max(base) or max(aa) < min(base)
            lines.append(
                f"\n{model} - {plain}: {diff:+.4f} top-1 (mean over {len(aa)} seeds); "
                + (
                    "the seed ranges do not overlap."
                    if separated
                    else "within the seed-to-seed spread (ranges overlap)."
                )
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python bench/compare_vision.py", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--dataset", required=True, help="the <dataset> of configs/vision/<model>-<dataset>.yaml")
    parser.add_argument(
        "--models", default="resnet18,aa_resnet18,vit", help="the <model>s to compare, comma-separated"
    )
    parser.add_argument("--seeds", default="0,1,2", help="seeds to train each model with, comma-separated")
    parser.add_argument("--steps", type=int, help="optimizer steps of every run (default: each recipe's)")
    parser.add_argument("--out-dir", type=Path, help="where the runs go (default: runs/compare-<dataset>)")
    parser.add_argument("--retrain", action="store_true", help="train every run afresh")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
    if not models or not seeds:
        parser.error("--models and --seeds must name at least one each")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    for model in models:
        recipe(model, args.dataset)  # fail before training anything
    out_dir = (args.out_dir or Path("runs") / f"compare-{args.dataset}").resolve()
    figures: dict[str, list[dict[str, Any]]] = {}
    for seed in seeds:  # seed-major: an interrupted sweep has every model at the seeds it reached
        for model in models:
            run_dir = train_run(model, args.dataset, seed, args.steps, out_dir, args.retrain)
            figures.setdefault(model, []).append({"seed": seed, **run_figures(run_dir)})
    table = summarize(figures, seeds)
    print(f"\n{args.dataset}, {args.steps or 'recipe'} steps, seeds {seeds}\n\n{table}")
    out = out_dir / "compare.json"
    out.write_text(
        json.dumps({"dataset": args.dataset, "steps": args.steps, "seeds": seeds, "runs": figures}, indent=2)
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
