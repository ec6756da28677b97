"""What ``--threads`` does on a machine another job shares: the same ``generate`` command timed with each setting,
alone and beside a competing PyTorch job.

    python bench/threads.py --checkpoint runs/unclip-demo [--settings auto,1,2] [--repeats 3] [--images 12]

Each measurement is one ``python -m multimodal.generate`` process (model loading included, as a user sees it) making
``--images`` images (6 prompts), timed by its wall clock. "busy" runs it while another process multiplies matrices
with PyTorch's default thread count (every core), the way a second training job would; "idle" runs it alone. The
median and the range of ``--repeats`` runs are printed for every (machine state, setting), and whether the grids
were byte-identical across settings.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = ["a red circle", "a green square", "a blue triangle", "a yellow star", "a purple diamond", "an orange cross"]
COMPETITOR = """
import torch
a = torch.randn(1024, 1024)
while True:
    a = torch.tanh(a @ a)
"""


def generate(checkpoint: str, threads: str, images: int, out: Path) -> tuple[float, str, bool]:
    """Wall seconds of one generate process, the SHA-256 of its grid, and whether auto took fewer threads than
    cores (its ``note:`` line)."""
    per_prompt = max(1, images // len(PROMPTS))
    cmd = [sys.executable, "-m", "multimodal.generate", "--checkpoint", checkpoint, *PROMPTS, "--n", str(per_prompt),
           "--threads", threads, "--out", str(out)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # let --threads decide
    start = time.perf_counter()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    return seconds, hashlib.sha256(out.read_bytes()).hexdigest(), "cores busy with other work" in done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="saved pipeline or unCLIP run root, e.g. runs/unclip-demo")
    parser.add_argument("--settings", default="auto,1,2", help="comma-separated --threads values to compare")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=12, help="images per command (6 prompts)")
    args = parser.parse_args()
    settings = args.settings.split(",")
    out = Path(tempfile.mkdtemp()) / "grid.png"
    rows, digests = [], set()
    for state in ("idle", "busy"):
        competitor = None
        if state == "busy":
            env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
            competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=env)
            time.sleep(3)  # past its start-up, into its loop
        try:
            times = {s: [] for s in settings}
            fewer = {s: 0 for s in settings}
            for _ in range(args.repeats):  # settings interleaved, so drift hits them alike
                for setting in settings:
                    seconds, digest, took_fewer = generate(args.checkpoint, setting, args.images, out)
                    times[setting].append(seconds)
                    fewer[setting] += took_fewer
                    digests.add(digest)
        finally:
            if competitor is not None:
                competitor.kill()
                competitor.wait()
        rows += [(state, s, times[s], fewer[s]) for s in settings]
    cores = len(os.sched_getaffinity(0))
    print(f"{args.images} images per command, {cores} cores, {args.repeats} runs each (median, min-max)")
    print("| machine | --threads | seconds (median) | min | max | runs where auto left cores to others |")
    print("|---|---|---:|---:|---:|---:|")
    for state, setting, t, n in rows:
        left = f"{n} of {len(t)}" if setting == "auto" else ""
        print(f"| {state} | {setting} | {statistics.median(t):.1f} | {min(t):.1f} | {max(t):.1f} | {left} |")
    print(f"grids byte-identical across all runs: {len(digests) == 1}")


if __name__ == "__main__":
    main()
