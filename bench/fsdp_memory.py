"""Parameter + optimizer-state bytes per process, DDP against FSDP2 (``train.fsdp=true``), on CPU processes over gloo.

    python bench/fsdp_memory.py [--processes 2,4] [--dim 512] [--depth 8] [--out /tmp/fsdp_memory.json]

Each (processes, DDP | FSDP2) pair trains the classifier of ``configs/vit/shapes.yaml`` (the ViT_C named there,
widened to ``--dim`` and deepened to ``--depth``, heads = dim / 64, MLP ratio 4) for 2 steps of 4 images of 32 px per
process on a small shapes dataset generated into a temporary folder, launched by ``accelerate launch`` as the trainer
is. The figure is the run's ``results.json`` ``state_bytes_per_process``: the most bytes of parameters and AdamW state
any process holds, its shards under FSDP2 and the whole model under DDP. Gradients and activations are not in it.

FSDP2 shards every parameter along its first dimension; a dimension that does not divide by the process count leaves
some ranks a larger slice (one of length 1, as a ViT's class token and position embedding have, stays whole on rank
0), so the largest process holds a little more than 1/N of the DDP figure. The table shows both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from multimodal.data.shapes import ShapesSpec, write_shapes_card
from training.launch import free_port
from training.tasks import build_task
from training.train import load_config

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "vit" / "shapes.yaml"
# 4 train shards of 16: one or more per process at up to 4 processes, enough for 2 steps of 4 images each.
SPEC = ShapesSpec(seed=1, image_size=32, train=64, test=8, heldout=8, samples_per_shard=16)
STEPS, BATCH = 2, 4


def make_shapes(root: Path) -> Path:
    """Generate the small shapes dataset under ``root`` and write a card for it; returns the card's path."""
    return write_shapes_card(root, SPEC, "bench-shapes")


def overrides(card: Path, *, dim: int, depth: int) -> list[str]:
    """The recipe overrides every configuration shares: model size, data, a 2-step run with nothing else."""
    if dim % 64:
        raise ValueError(f"--dim must be a multiple of 64 (heads of width 64), got {dim}")
    return [
        f"data.dataset={card}", "data.eval_split=null", f"data.batch_size={BATCH}", "data.num_workers=0",
        "data.shuffle_buffer=16", f"model.args.dim={dim}", f"model.args.depth={depth}",
        f"model.args.heads={dim // 64}", "model.args.mlp_ratio=4.0", "optim.warmup_steps=0", f"train.steps={STEPS}",
        "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=0", "train.log_with=[]",
        "train.progress=false",
    ]  # fmt: skip


def count_parameters(card: Path, *, dim: int, depth: int) -> int:
    """Parameters of the model these overrides train (the class count comes from the dataset's card)."""
    cfg = load_config(RECIPE, overrides(card, dim=dim, depth=depth))
    model = build_task(cfg).resolve().model.build()
    return sum(p.numel() for p in model.parameters())


def measure(card: Path, out_dir: Path, *, processes: int, fsdp: bool, dim: int, depth: int) -> dict[str, Any]:
    """Train one configuration on ``processes`` CPU processes (one thread each); returns its ``results.json``."""
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    command = [
        accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        "-m", "training.train", str(RECIPE), *overrides(card, dim=dim, depth=depth), f"run.out_dir={out_dir}",
        f"train.fsdp={str(fsdp).lower()}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{'FSDP2' if fsdp else 'DDP'} at {processes} processes failed:\n{done.stderr[-4000:]}")
    return json.loads((out_dir / "results.json").read_text())


def compare(root: Path, processes: list[int], *, dim: int, depth: int) -> dict[str, Any]:
    """Generate the data under ``root`` and measure DDP and FSDP2 at each process count; the figures as a dict."""
    card = make_shapes(root)
    params = count_parameters(card, dim=dim, depth=depth)
    print(f"{RECIPE.relative_to(REPO)} model at dim {dim}, depth {depth}: {params:,} parameters", flush=True)
    rows = []
    for n in processes:
        ddp, fsdp = (
            measure(card, root / f"run-{n}-{kind}", processes=n, fsdp=kind == "fsdp", dim=dim, depth=depth)
            for kind in ("ddp", "fsdp")
        )
        for results in (ddp, fsdp):
            if (results["num_processes"], results["step"]) != (n, STEPS):
                raise RuntimeError(f"expected {STEPS} steps on {n} processes, the run reports {results}")
        ddp_bytes, fsdp_bytes = ddp["state_bytes_per_process"], fsdp["state_bytes_per_process"]
        rows.append(
            {"processes": n, "ddp_bytes": ddp_bytes, "fsdp_bytes": fsdp_bytes, "ratio": fsdp_bytes / ddp_bytes}
        )
    return {"model": {"dim": dim, "depth": depth, "parameters": params}, "steps": STEPS, "batch": BATCH, "rows": rows}


def table(figures: dict[str, Any]) -> str:
    """The Markdown table of :func:`compare`'s figures."""
    lines = [
        "| processes | DDP bytes/process | FSDP bytes/process | FSDP/DDP ratio | ideal 1/N |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in figures["rows"]:
        n = row["processes"]
        lines.append(f"| {n} | {row['ddp_bytes']:,} | {row['fsdp_bytes']:,} | {row['ratio']:.4f} | {1 / n:.4f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", default="2,4", help="comma-separated process counts (default: 2,4)")
    parser.add_argument("--dim", type=int, default=512, help="ViT width, a multiple of 64 (default: 512)")
    parser.add_argument("--depth", type=int, default=8, help="ViT blocks (default: 8)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "fsdp_memory.json")
    args = parser.parse_args(argv)
    try:
        args.processes = [int(p) for p in args.processes.split(",") if p.strip()]
    except ValueError:
        parser.error(f"--processes takes comma-separated integers, got {args.processes!r}")
    if not args.processes or min(args.processes) < 2:
        parser.error("--processes needs counts of 2 or more (DDP and FSDP2 need a process group)")
    if args.dim < 64 or args.dim % 64 or args.depth < 1:
        parser.error(f"--dim must be a positive multiple of 64 and --depth >= 1, got {args.dim} and {args.depth}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fsdp-memory-") as tmp:
        figures = compare(Path(tmp), args.processes, dim=args.dim, depth=args.depth)
    print(f"{STEPS} steps of {BATCH} images per process; bytes of parameters + AdamW state on the largest process")
    print(table(figures))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures: {args.out}")


if __name__ == "__main__":
    main()
