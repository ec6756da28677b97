"""How long each command line takes to answer ``--help``, and the trainer a recipe's mistake (an unknown key).

    python bench/cli_startup.py [--repeats 5] [--baseline PATH] [--json out.json]

Each command runs ``--repeats`` times in a fresh interpreter (``python -m MODULE --help``, this checkout's venv) and
the median wall time is reported. ``--baseline PATH`` times the same commands in another checkout of the project
(e.g. ``git worktree add /tmp/before <commit>``) with the same interpreter, side by side, alternating the two, so
that the machine's load hits both alike; commands that checkout lacks are left blank.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.test_cli_startup import cli_modules  # noqa: E402 (the same list the test checks)

BAD_RECIPE = "task: {name: clip}\ntrain: {stepz: 3}\n"


def commands(recipe: Path) -> dict[str, list[str]]:
    """label -> argv after ``python``."""
    out = {f"{m} --help": ["-m", m, "--help"] for m in cli_modules()}
    out["training.train (unknown key)"] = ["-m", "training.train", str(recipe)]
    return out


def has_module(checkout: Path, module: str) -> bool:
    """Whether ``checkout`` holds ``module`` itself (the editable install would find this checkout's otherwise)."""
    path = checkout.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def seconds(argv: list[str], cwd: Path) -> float | None:
    """Wall time of ``python ARGV`` run in ``cwd``; None when that checkout has no such module."""
    if argv[0] == "-m" and not has_module(cwd, argv[1]):
        return None
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if "No module named" in done.stderr:
        return None
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command; the median is reported")
    parser.add_argument("--baseline", type=Path, help="another checkout of the project to time beside this one")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.baseline is not None and not (args.baseline / "multimodal").is_dir():
        parser.error(f"--baseline {args.baseline} is not a checkout of this project (no multimodal/ in it)")
    trees = {"this": REPO, **({"baseline": args.baseline} if args.baseline else {})}
    results: dict[str, dict[str, float | None]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / "bad.yaml"
        recipe.write_text(BAD_RECIPE)
        for label, command in commands(recipe).items():
            times: dict[str, list[float | None]] = {name: [] for name in trees}
            for _ in range(args.repeats):
                for name, tree in trees.items():
                    times[name].append(seconds(command, tree))
            results[label] = {
                name: None if None in t else statistics.median(t)  # type: ignore[type-var]
                for name, t in times.items()
            }
            cells = "  ".join(f"{name} {'-' if s is None else f'{s:.2f} s'}" for name, s in results[label].items())
            print(f"{label:45s} {cells}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"repeats": args.repeats, "seconds": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
