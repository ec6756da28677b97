"""Forward and training throughput of our ViT against timm's, same architecture and weights, in one run.

    python bench/vision.py [--models vit_tiny_patch16_224,vit_small_patch16_224] [--batch 32] [--steps 5]
                           [--repeats 3] [--threads N] [--precision fp32|bf16]

Ours is ``VisionTransformer.from_timm(theirs)``. For each model: inference (eval mode, no grad) and a training step
(forward, cross-entropy, backward, AdamW step, zero_grad; the same ``torch.optim.AdamW`` for both), each timed in
alternating rounds (ours, timm, ours, ...) so load drift on the machine hits both alike; the median round is
reported, and the max abs difference of the logits re-checks that both hold the same weights. bf16 runs forward and
loss under CPU autocast.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable

import timm
import torch
from torch import nn

from multimodal.models import VisionTransformer


def autocast(precision: str) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def make_forward(model: nn.Module, x: torch.Tensor, precision: str) -> Callable[[], None]:
    def run() -> None:
        model.eval()
        with torch.no_grad(), autocast(precision):
            model(x)

    return run


def make_train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def run() -> None:
        model.train()
        with autocast(precision):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return run


def alternate(fns: dict[str, Callable[[], None]], *, steps: int, repeats: int, batch: int) -> dict[str, float]:
    """Median images/s of each function over ``repeats`` alternating rounds of ``steps`` calls (after 2 warm-up)."""
    for fn in fns.values():
        fn(), fn()
    rates: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            rates[name].append(steps * batch / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit_tiny_patch16_224,vit_small_patch16_224", help="timm ViT names")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed calls per round")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds; the median is reported")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    if min(args.batch, args.steps, args.repeats, args.threads) < 1:
        parser.error("--batch, --steps, --repeats and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    print(
        f"batch {args.batch}, {args.threads} threads, {args.repeats} rounds of {args.steps} calls, {args.precision}, "
        f"CPU, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(
        f"| {'model':<22} | {'ours fwd img/s':>14} | {'timm fwd img/s':>14} | {'fwd ratio':>9} | "
        f"{'ours train img/s':>16} | {'timm train img/s':>16} | {'train ratio':>11} | max abs diff |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        torch.manual_seed(0)
        theirs = timm.create_model(name, pretrained=False, num_classes=100)
        ours = VisionTransformer.from_timm(theirs)
        size = theirs.patch_embed.img_size[0]
        x = torch.randn(args.batch, 3, size, size)
        y = torch.randint(0, 100, (args.batch,))
        with torch.no_grad():
            diff = (ours.eval()(x) - theirs.eval()(x)).abs().max().item()
        models = {"ours": ours, "timm": theirs}
        timing = {"steps": args.steps, "repeats": args.repeats, "batch": args.batch}
        fwd = alternate({k: make_forward(m, x, args.precision) for k, m in models.items()}, **timing)
        train = alternate({k: make_train_step(m, x, y, args.precision) for k, m in models.items()}, **timing)
        print(
            f"| {name:<22} | {fwd['ours']:>14.1f} | {fwd['timm']:>14.1f} | {fwd['ours'] / fwd['timm']:>9.2f} | "
            f"{train['ours']:>16.1f} | {train['timm']:>16.1f} | {train['ours'] / train['timm']:>11.2f} | "
            f"{diff:.2e} |"
        )


if __name__ == "__main__":
    main()
