"""Train every expert system on one GATO mixture at equal training sequences, then compare them (eval.experts).

    python bench/experts.py [--config configs/gato/six-tasks.yaml] [--steps 1200] [--seed 0]
                            [--out-dir runs/experts] [--episodes 20] [--samples 1000]

Systems, each trained in its own ``python -m training.train`` process from ``--config`` with ``train.steps`` set:

- ``dense``: the recipe as it is;
- ``token-moe``: token-routed top-1 experts (one per task, capacity 1.25) in every other block;
- ``task-moe``: task-routed top-1 experts (one per task) in every other block;
- ``demix``: one expert per task in every other block (evaluated with the label and with the task unknown);
- ``btm``: a seed run on the whole mixture for a third of the steps, then one branch per task group (state-vector
  control, pixel control, captions) started from it, each for its group's share of the remaining steps, two at a
  time (one thread each); merged by posterior-weighted ensembling and by parameter averaging;
- ``single``: one run per task from scratch, for that task's share of the steps, two at a time.

Every expert system has the dense model's active parameters per token, and every task sees the same number of
training sequences in every system (batch x steps x its share). A finished run is reused, so the sweep can be
stopped and started again. Prints the comparison table; figures in ``<out-dir>/experts.json``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from multimodal.cli import HelpFormatter
from multimodal.data import load_card
from multimodal.data.control import env_spec
from training.train import load_config

REPO = Path(__file__).resolve().parents[1]


def run_command(name: str, config: Path, out_dir: Path, overrides: list[str], *, threads: int = 0) -> list[str] | None:
    """The training command of run ``name``, or None when it already finished."""
    run_dir = out_dir / name
    if (run_dir / "results.json").is_file():
        print(f"{name}: reusing {run_dir}", flush=True)
        return None
    resume = ["resume=latest"] if (run_dir / "checkpoints").is_dir() else ["run.overwrite=true"]
    return [
        sys.executable, "-m", "training.train", str(config), f"run.name={name}", f"run.out_dir={run_dir}",
        "train.progress=false", f"train.threads={threads}", *overrides, *resume,
    ]  # fmt: skip


def train_all(commands: dict[str, list[str] | None], *, parallel: int) -> None:
    """Run the commands, ``parallel`` at a time; stop at the first failure."""
    pending = [(name, cmd) for name, cmd in commands.items() if cmd is not None]
    while pending:
        batch, pending = pending[:parallel], pending[parallel:]
        start = time.perf_counter()
        procs = {name: subprocess.Popen(cmd, cwd=REPO) for name, cmd in batch}
        for name, proc in procs.items():
            if proc.wait() != 0:
                raise SystemExit(f"{name} failed (exit {proc.returncode}); its log is above")
        print(f"trained {', '.join(procs)} in {time.perf_counter() - start:.0f} s", flush=True)


def groups(mixture: dict[str, float]) -> dict[str, dict[str, float]]:
    """Task groups of a mixture by kind: state-vector control, pixel control, captions."""
    out: dict[str, dict[str, float]] = {}
    for key, share in mixture.items():
        card = load_card(key)
        if card.generator != "control":
            kind = "captions"
        else:
            kind = "pixels" if env_spec(card.generator_args["env_id"]).pixels else "state"
        out.setdefault(kind, {})[key] = share
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "gato" / "six-tasks.yaml")
    parser.add_argument("--steps", type=int, default=1200, help="training steps of each generalist")
    parser.add_argument("--seed", type=int, default=0, help="run.seed of every run")
    parser.add_argument("--out-dir", type=Path, default=REPO / "runs" / "experts")
    parser.add_argument("--episodes", type=int, default=20, help="rollouts per control task in the comparison")
    parser.add_argument("--samples", type=int, default=1000, help="images captioned per split in the comparison")
    parser.add_argument(
        "--systems", default="dense,token-moe,task-moe,demix,btm,single", help="which systems (comma-separated)"
    )
    args = parser.parse_args(argv)
    systems = args.systems.split(",")
    cfg = load_config(args.config, [])
    mixture = dict(cfg.task.mixture)
    tasks = [load_card(key).name for key in mixture]
    total = sum(mixture.values())
    warmup = max(1, min(cfg.optim.warmup_steps, args.steps // 10))
    common = [f"run.seed={args.seed}", "train.eval_every=0", f"train.checkpoint_every={args.steps}"]
    flat = ", ".join(tasks)
    variants = {
        "dense": [],
        "token-moe": ["model.args.mlp=moe", f"model.args.moe={{num_experts: {len(tasks)}, top_k: 1}}",
                      "model.args.moe_every=2"],
        "task-moe": ["model.args.mlp=task_moe", f"model.args.moe={{num_experts: {len(tasks)}, top_k: 1}}",
                     "model.args.moe_every=2", f"model.args.tasks=[{flat}]"],
        "demix": ["model.args.mlp=demix", "model.args.moe_every=2", f"model.args.tasks=[{flat}]"],
    }  # fmt: skip
    steps = [f"train.steps={args.steps}", f"optim.warmup_steps={warmup}"]
    train_all(
        {name: run_command(name, args.config, args.out_dir, [*common, *steps, *over])
         for name, over in variants.items() if name in systems},
        parallel=1,
    )  # fmt: skip

    compare = [sys.executable, "-m", "eval.experts", "compare", "--episodes", str(args.episodes)]
    compare += ["--samples", str(args.samples), "--out", str(args.out_dir / "experts.json")]
    compare += [f"--run={name}={args.out_dir / name}" for name in variants if name in systems]

    if "btm" in systems:
        seed_steps = args.steps // 3
        seed_warm = max(1, warmup // 3)
        train_all(
            {"btm-seed": run_command("btm-seed", args.config, args.out_dir,
                                     [*common, f"train.steps={seed_steps}", f"optim.warmup_steps={seed_warm}",
                                      f"train.checkpoint_every={seed_steps}"])},
            parallel=1,
        )  # fmt: skip
        branches = {}
        for kind, part in groups(mixture).items():
            n = max(1, round((args.steps - seed_steps) * sum(part.values()) / total))
            shares = "{" + ", ".join(f"{k}: {v}" for k, v in part.items()) + "}"
            branches[f"btm-{kind}"] = run_command(
                f"btm-{kind}", args.config, args.out_dir,
                [*common, f"task.mixture={shares}", f"model.init_from={args.out_dir / 'btm-seed'}",
                 f"train.steps={n}", f"optim.warmup_steps={max(1, n // 10)}", f"train.checkpoint_every={n}"],
                threads=1,
            )  # fmt: skip
        train_all(branches, parallel=2)
        average = args.out_dir / "btm-average"
        if not average.exists():
            merge = [sys.executable, "-m", "eval.experts", "merge", "--out", str(average)]
            merge += [f"--branch={args.out_dir / name}" for name in branches]
            subprocess.run(merge, cwd=REPO, check=True)
        compare += [f"--ensemble=btm-ensemble={','.join(str(args.out_dir / name) for name in branches)}"]
        compare += [f"--run=btm-average={average}"]

    if "single" in systems:
        singles = {}
        for key, share in mixture.items():
            name = f"single-{load_card(key).name}"
            n = max(1, round(args.steps * share / total))
            singles[name] = run_command(
                name, args.config, args.out_dir,
                [*common, f"task.mixture={{{key}: 1.0}}", f"train.steps={n}",
                 f"optim.warmup_steps={max(1, n // 10)}", f"train.checkpoint_every={n}"],
                threads=1,
            )  # fmt: skip
        train_all(singles, parallel=2)
        compare += [f"--single={args.out_dir / name}" for name in singles]

    print(" ".join(compare[1:]), flush=True)
    return subprocess.run(compare, cwd=REPO, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
