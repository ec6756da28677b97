"""Training-step throughput of our ViT against timm's on identical architectures and weights.

    python bench/vit_vs_timm.py [--batch 32] [--steps 10] [--threads 2]

Prints a table: images/s for forward+backward+AdamW step, and the max abs difference of the final token
features (the two models hold the same weights, so this also re-checks equivalence at full size).
"""

from __future__ import annotations

import argparse
import time

import timm
import torch

import multimodal


def step_rate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for i in range(steps + 2):
        if i == 2:  # two warm-up steps
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * x.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, img in (("vit_tiny_patch16_224", 224), ("vit_small_patch16_224", 224)):
        torch.manual_seed(0)
        theirs = timm.create_model(name, pretrained=False, num_classes=100)
        ours = multimodal.create_model(name, num_classes=100)
        ours.load_state_dict(
            {k.replace("blocks.", "transformer.blocks.", 1): v for k, v in theirs.state_dict().items()}
        )
        x = torch.randn(args.batch, 3, img, img)
        y = torch.randint(0, 100, (args.batch,))
        with torch.no_grad():
            diff = (ours.eval().forward_features(x) - theirs.eval().forward_features(x)).abs().max().item()
        rows.append((name, step_rate(ours, x, y, args.steps), step_rate(theirs, x, y, args.steps), diff))
    print(f"batch {args.batch}, {args.threads} threads, {args.steps} timed steps, float32, CPU")
    print(f"{'model':<24} {'ours img/s':>10} {'timm img/s':>10} {'ratio':>6} {'max |diff|':>10}")
    for name, a, b, d in rows:
        print(f"{name:<24} {a:>10.1f} {b:>10.1f} {a / b:>6.2f} {d:>10.2e}")


if __name__ == "__main__":
    main()
