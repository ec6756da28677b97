"""CLIP_benchmark, unchanged, on a CLIP run of this project, beside eval.zeroshot and eval.retrieval on the same data.

    python bench/clip_benchmark.py --checkpoint runs/clip-digits-patch --dataset digits [--split test] [--out DIR]

Runs, in order, the commands a user would type (each printed before it runs):

1. ``python -m multimodal.export --to open_clip``: the run as an open_clip ``local-dir:`` folder;
2. ``python -m multimodal.data.benchmark`` twice: the split in CLIP_benchmark's WebDataset layout, for zero-shot
   classification (the run's ``data.label``) and for retrieval;
3. ``clip_benchmark eval`` on both (``--no_amp``: its autocast would compute in bfloat16 on a CPU;
   ``--num_workers 0``; offline: ``HF_HUB_OFFLINE=1``), with the ``clip_benchmark`` of ``--clip-benchmark`` (default:
   the one on PATH, else ``.venv/transformer-lens/bin/clip_benchmark``, where ``make test`` installs it);
4. ``eval.zeroshot`` and ``eval.retrieval`` of the run on the exported folders (``--dataset wds:DIR``);

then prints each metric both ways with the absolute difference, writes everything to ``DIR/summary.json``, and
exits 1 if a difference exceeds ``--tolerance`` (0.005).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repository root, when run as a script

# CLIP_benchmark's metric -> ours (eval.zeroshot's split entry, or eval.retrieval's key: the same name)
ZEROSHOT = {"acc1": "top1", "acc5": "top5", "mean_per_class_recall": "mean_per_class_recall"}
RETRIEVAL = [f"{d}_retrieval_recall@{k}" for k in (1, 5, 10) for d in ("image", "text")]


def clip_benchmark_command(given: str | None) -> str:
    """The ``clip_benchmark`` executable: ``given``, else the one on PATH, else the one ``make test`` installs."""
    found = given or shutil.which("clip_benchmark") or str(REPO / ".venv/transformer-lens/bin/clip_benchmark")
    if not Path(found).exists() and shutil.which(found) is None:
        raise SystemExit(
            f"error: no clip_benchmark at {found}: pip install clip-benchmark (or run make test, which installs it "
            "in .venv/transformer-lens), or pass --clip-benchmark PATH"
        )
    return found


def step(command: list[str], *, env: dict[str, str] | None = None) -> None:
    """Print ``command`` and run it from the repository root; stop with its output if it fails."""
    print("$", shlex.join(command), flush=True)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(
            f"error: {command[0]} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
        )


def run_label(checkpoint: Path) -> str:
    """The label a CLIP run trained on (its config's ``data.label``)."""
    from multimodal.runs import read_run_config

    label = read_run_config(checkpoint, task="clip").get("data", {}).get("label")
    if not label:
        raise SystemExit(f"error: {checkpoint} has no data.label in its config.yaml; this compares zero-shot labels")
    return label


def compare(args: argparse.Namespace) -> dict[str, Any]:
    out, py = Path(args.out).resolve(), sys.executable
    checkpoint = Path(args.checkpoint).resolve()
    cb = clip_benchmark_command(args.clip_benchmark)
    label, name = run_label(checkpoint), Path(args.dataset).name
    model, cls, ret = out / "open_clip", out / name, out / f"{name}_retrieval"
    out.mkdir(parents=True, exist_ok=True)
    step([py, "-m", "multimodal.export", "--checkpoint", str(checkpoint), "--to", "open_clip", "--out", str(model),
          "--force"])  # fmt: skip
    common = ["--dataset", args.dataset, "--split", args.split, "--label", label, "--quiet", "--force"]
    step([py, "-m", "multimodal.data.benchmark", *common, "--out", str(cls)])
    step([py, "-m", "multimodal.data.benchmark", *common, "--type", "retrieval", "--out", str(ret)])
    offline = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    theirs = {}
    for task, folder in (("zeroshot_classification", cls), ("zeroshot_retrieval", ret)):
        result = out / f"clip_benchmark_{task}.json"
        step([cb, "eval", "--model", f"local-dir:{model}", "--pretrained", "local", "--dataset", f"wds/{folder.name}",
              "--dataset_root", str(folder), "--split", args.split, "--task", task, "--recall_k", "1", "5", "10",
              "--no_amp", "--num_workers", "0", "--batch_size", str(args.batch_size), "--quiet", "--output",
              str(result)], env=offline)  # fmt: skip
        theirs[task] = json.loads(result.read_text())["metrics"]
    ours_zs, ours_r = out / "eval_zeroshot.json", out / "eval_retrieval.json"
    ours_args = ["--checkpoint", str(checkpoint), "--split", args.split, "--workers", "0"]
    step([py, "-m", "eval.zeroshot", *ours_args, "--dataset", f"wds:{cls}", "--out", str(ours_zs)])
    step([py, "-m", "eval.retrieval", *ours_args, "--dataset", f"wds:{ret}", "--out", str(ours_r)])
    zs = json.loads(ours_zs.read_text())["splits"][args.split]
    retrieval = json.loads(ours_r.read_text())
    rows = [(m, theirs["zeroshot_classification"][m], zs[o]) for m, o in ZEROSHOT.items()]
    rows += [(m, theirs["zeroshot_retrieval"][m], retrieval[m]) for m in RETRIEVAL]
    return {
        "checkpoint": str(args.checkpoint), "dataset": args.dataset, "split": args.split, "label": label,
        "num_samples": zs["num_samples"], "tolerance": args.tolerance,
        "metrics": {m: {"clip_benchmark": t, "ours": o, "abs_diff": abs(t - o)} for m, t, o in rows},
        "clip_benchmark": theirs,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="CLIP run (a ViT-tower one: open_clip must express it)")
    parser.add_argument("--dataset", required=True, help="card name or path of the data to evaluate on")
    parser.add_argument("--split", default="test", help="split to evaluate")
    parser.add_argument("--out", help="working folder (default: runs/clip-benchmark/<run>-<dataset>)")
    parser.add_argument("--clip-benchmark", help="the clip_benchmark executable (default: see above)")
    parser.add_argument("--batch-size", type=int, default=64, help="CLIP_benchmark's --batch_size")
    parser.add_argument("--tolerance", type=float, default=0.005, help="largest absolute difference that passes")
    args = parser.parse_args(argv)
    args.out = args.out or f"runs/clip-benchmark/{Path(args.checkpoint).name}-{Path(args.dataset).name}"
    summary = compare(args)
    print(f"\n{summary['dataset']}:{summary['split']} ({summary['num_samples']} images, label {summary['label']})")
    print(f"{'metric':<28} {'CLIP_benchmark':>14} {'ours':>8} {'|diff|':>8}")
    for metric, m in summary["metrics"].items():
        print(f"{metric:<28} {m['clip_benchmark']:>14.4f} {m['ours']:>8.4f} {m['abs_diff']:>8.1e}")
    from multimodal.io import atomic_write_json

    path = Path(args.out) / "summary.json"
    atomic_write_json(path, summary, indent=2)
    print(f"wrote {path}")
    worst = max(m["abs_diff"] for m in summary["metrics"].values())
    if worst > args.tolerance:
        print(f"error: a metric differs by {worst:.4f} > {args.tolerance}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
