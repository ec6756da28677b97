"""What the hook points cost a training step when no hook is attached.

    python bench/hook_overhead.py [--width 256 --layers 6 --batch 64 --precision bf16 --threads N]

A step of 1% or less is too small to see by timing the step twice on a shared machine (steps move by several
percent between rounds), so the cost is measured from its parts: the hook-point calls and ``active()`` checks one
step makes (counted on the step itself), times what one inactive call costs (timed alone, best of many), against
the step time (``bench/clip_train.py``'s CLIP step, same shapes). That product is an upper bound: it charges the
calls' full Python cost, which the step would otherwise partly overlap with nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench.* when run as a script

from bench.clip_train import make_steps
from multimodal.nn.hooks import HookPoint


def count_calls(step, n: int = 1) -> tuple[int, int]:
    """(forward calls, active() checks) of hook points during ``n`` steps."""
    counts = {"forward": 0, "active": 0}
    forward, active = HookPoint.forward, HookPoint.active

    def counted_forward(self, x):
        counts["forward"] += 1
        return forward(self, x)

    def counted_active(self):
        counts["active"] += 1
        return active(self)

    HookPoint.forward, HookPoint.active = counted_forward, counted_active
    try:
        for _ in range(n):
            step()
    finally:
        HookPoint.forward, HookPoint.active = forward, active
    return counts["forward"] // n, counts["active"] // n


def per_call_seconds(repeats: int = 7, calls: int = 20000) -> tuple[float, float]:
    """(one inactive hook-point call, one active() check), best of ``repeats`` loops."""
    point, x = HookPoint(), torch.zeros(2, 3)
    best_call = best_check = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            point(x)
        best_call = min(best_call, (time.perf_counter() - start) / calls)
        start = time.perf_counter()
        for _ in range(calls):
            point.active()
        best_check = min(best_check, (time.perf_counter() - start) / calls)
    return best_call, best_check


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, default in (("width", 256), ("layers", 6), ("image-size", 64), ("patch", 8), ("context", 32)):
        parser.add_argument(f"--{flag}", type=int, default=default)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--embed", type=int, default=256)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--optimizer", default="own")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    step = make_steps(args, args.precision)[0]["ours"]
    step()
    calls, checks = count_calls(step)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    call_s, check_s = per_call_seconds()
    cost = calls * call_s + checks * check_s
    print(
        f"CLIP step, width {args.width}, {args.layers} layers per tower, batch {args.batch}, {args.precision}, "
        f"{args.threads} thread(s)\n"
        f"hook points per step: {calls} calls ({call_s * 1e6:.2f} us each), {checks} active() checks "
        f"({check_s * 1e6:.2f} us each)\n"
        f"step {step_s * 1e3:.1f} ms (median of {args.steps}); hook points at most {cost * 1e3:.3f} ms "
        f"= {cost / step_s:.3%} of the step"
    )


if __name__ == "__main__":
    main()
