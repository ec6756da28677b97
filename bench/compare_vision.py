"""Train ResNet, AA-ResNet, ViT and spatial-transformer recipes of matched size for the same steps over several seeds;
tabulate, with paired differences.

    python bench/compare_vision.py --dataset shapes [--models resnet18,aa_resnet18,vit] [--seeds 0,1,2 | 0-9]
                                   [--steps N] [--distort rts] [--threads 1 --parallel 2]
                                   [--out-dir runs/compare-shapes] [--retrain]

Each (model, seed) trains ``configs/vision/<model>-<dataset>.yaml`` with ``run.seed`` and ``train.steps`` overridden
(and ``data.distort`` with ``--distort``: RTS-distorted images, drawn anew each epoch in training, the same test set
for every run), in its own ``python -m training.train`` process (``--parallel`` at a time), under ``--out-dir``. A
run that already finished with the same steps is reused and an interrupted one resumes from its last checkpoint
(``--retrain`` starts all afresh), so the sweep can be stopped and restarted. The table gives parameters, the final
test top-1 (mean, sample standard deviation and each seed), and training throughput (median of the logged
samples/s); it is printed as Markdown and written with the per-run figures to ``<out-dir>/compare.json``.

It answers two of the seed notes' claims, each model against its twin trained with the same seeds (so the same data
order): ``aa_X`` against ``X`` (Bello et al. 2019: attention augmentation improves its ResNet, ResNet-50 76.4 -> 77.7
ImageNet top-1) and ``stn_X`` against ``X`` (Jaderberg et al. 2015: a spatial transformer in front beats the same
network on distorted digits). Each pair gets the mean of its per-seed differences with a 95% t-interval and the
throughput ratio; each ``stn_X`` run's first seed also draws ``<out-dir>/<run>-st.png``, test inputs above what its
transformer made of them.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from scipy import stats

from multimodal import load_checkpoint
from multimodal.cli import HelpFormatter
from multimodal.data import SampleDecoder
from multimodal.data.cards import load_card
from multimodal.evaluation.classification import eval_stream
from multimodal.pipelines.grid import make_grid
from training.train import load_config

REPO = Path(__file__).resolve().parents[1]


def recipe(model: str, dataset: str) -> Path:
    path = REPO / "configs" / "vision" / f"{model}-{dataset}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise SystemExit(f"no recipe {path.relative_to(REPO)}; available: {', '.join(available)}")
    return path


def train_run(
    model: str,
    dataset: str,
    seed: int,
    steps: int | None,
    out_dir: Path,
    retrain: bool,
    distort: str | None = None,
    threads: int = 0,
) -> Path:
    """Train (or reuse, or resume) one (model, seed) run; returns its run directory."""
    name = f"{model}-{dataset}{'-' + distort if distort else ''}-s{seed}"
    run_dir = out_dir / name
    overrides = [f"run.name={name}", f"run.out_dir={run_dir}", f"run.seed={seed}", "train.progress=false"]
    overrides.append(f"train.threads={threads}")
    if steps is not None:
        overrides.append(f"train.steps={steps}")
    if distort is not None:
        overrides.append(f"data.distort={distort}")
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


def paired_difference(variant: list[float], base: list[float]) -> tuple[float, float, float]:
    """Mean of the per-seed differences ``variant - base`` and its 95% t-interval (lower, upper); one seed has no
    interval (nan)."""
    diffs = [v - b for v, b in zip(variant, base, strict=True)]
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def twins(models: list[str]) -> list[tuple[str, str]]:
    """(variant, base) pairs among ``models``: aa_X and stn_X against X."""
    return [(m, base) for m in models for prefix in ("aa_", "stn_") if (base := m.removeprefix(prefix)) != m]


def summarize(figures: dict[str, list[dict[str, Any]]], seeds: list[int]) -> str:
    """The Markdown table, then for every aa_X or stn_X beside X: the paired difference with its 95% interval and
    a plain verdict, and the throughput ratio."""
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
    pairs = [(v, b) for v, b in twins(list(figures)) if b in figures]
    if pairs:
        lines += [
            "",
            "| pair | mean difference | 95% interval | verdict | throughput ratio |",
            "|---|---:|---|---|---:|",
        ]
    for variant, base in pairs:
        mean, lo, hi = paired_difference([r["top1"] for r in figures[variant]], [r["top1"] for r in figures[base]])
        if math.isnan(lo):
            verdict = "one seed: no interval"
        elif lo > 0 or hi < 0:
            verdict = f"{'better' if lo > 0 else 'worse'}: the interval excludes 0"
        else:
            verdict = "not settled: the interval includes 0"
        speed = statistics.median(r["samples_per_s"] for r in figures[variant]) / statistics.median(
            r["samples_per_s"] for r in figures[base]
        )
        lines.append(f"| {variant} - {base} | {mean + 0.0:+.4f} | [{lo:+.4f}, {hi:+.4f}] | {verdict} | {speed:.2f}x |")
    return "\n".join(lines)


def st_grid(run_dir: Path, out: Path, columns: int = 12) -> Path:
    """Test inputs of a run's data (as the run saw them, distortion included) above what its spatial transformer
    made of them, scaled up 4x; written to ``out``."""
    cfg = load_config(run_dir / "config.yaml", [])
    model, d = load_checkpoint(run_dir), cfg.data
    card = load_card(d.dataset)
    decoder = SampleDecoder(
        image_size=d.image_size, mean=d.mean, std=d.std, distort=d.distort, fixed_distortion=True,
        image_key=card.image_key,
    )  # fmt: skip
    images = next(iter(eval_stream(card, d.eval_split, decoder=decoder, batch_size=columns)))["image"]
    with torch.no_grad():
        warped = model.st(images)
    mean, std = torch.tensor(d.mean).view(3, 1, 1), torch.tensor(d.std).view(3, 1, 1)

    def pil(x: torch.Tensor) -> Image.Image:
        array = ((x * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        return Image.fromarray(array).resize((4 * d.image_size,) * 2, Image.NEAREST)

    grid = make_grid(
        [pil(x) for x in images] + [pil(x) for x in warped], columns=columns, labels=["input", "after the ST"]
    )
    grid.save(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python bench/compare_vision.py", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--dataset", required=True, help="the <dataset> of configs/vision/<model>-<dataset>.yaml")
    parser.add_argument(
        "--models", default="resnet18,aa_resnet18,vit", help="the <model>s to compare, comma-separated"
    )
    parser.add_argument("--seeds", default="0,1,2", help="seeds to train each model with: comma-separated, or A-B")
    parser.add_argument("--steps", type=int, help="optimizer steps of every run (default: each recipe's)")
    parser.add_argument(
        "--distort", choices=["none", "rts"], help="data.distort of every run (default: each recipe's)"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="train.threads of every run (0: auto; float sums depend on it)"
    )
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (with --threads 1: one a core)")
    parser.add_argument("--out-dir", type=Path, help="where the runs go (default: runs/compare-<dataset>[-rts])")
    parser.add_argument("--retrain", action="store_true", help="train every run afresh")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        first, _, last = args.seeds.partition("-")
        seeds = list(range(int(first), int(last) + 1)) if last else [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers or a range A-B, got {args.seeds!r}")
    if not models or not seeds:
        parser.error("--models and --seeds must name at least one each")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.parallel < 1:
        parser.error("--parallel must be >= 1")
    for model in models:
        recipe(model, args.dataset)  # fail before training anything
    suffix = f"-{args.distort}" if args.distort else ""
    out_dir = (args.out_dir or Path("runs") / f"compare-{args.dataset}{suffix}").resolve()
    jobs = [(model, seed) for seed in seeds for model in models]  # seed-major: a stopped sweep has whole seeds
    train = lambda job: train_run(  # noqa: E731
        job[0], args.dataset, job[1], args.steps, out_dir, args.retrain, args.distort, args.threads
    )
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:  # each thread waits on its training process
        run_dirs = dict(zip(jobs, pool.map(train, jobs), strict=True))
    figures: dict[str, list[dict[str, Any]]] = {}
    for (model, seed), run_dir in run_dirs.items():
        figures.setdefault(model, []).append({"seed": seed, **run_figures(run_dir)})
        if model.startswith("stn_") and seed == seeds[0]:
            print(f"wrote {st_grid(run_dir, out_dir / f'{run_dir.name}-st.png')}")
    table = summarize(figures, seeds)
    print(f"\n{args.dataset}{suffix}, {args.steps or 'recipe'} steps, seeds {seeds}\n\n{table}")
    out = out_dir / "compare.json"
    record = {"dataset": args.dataset, "distort": args.distort, "steps": args.steps, "seeds": seeds, "runs": figures}
    out.write_text(json.dumps(record, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
