"""GATO training and acting speed for a recipe: seconds per optimizer step and rollout actions per second.

    python bench/gato.py [--recipe configs/gato/mixed.yaml] [--steps 8] [key=value ...]

Builds the recipe's task and model (random weights), draws its real batches (every dataset of the mixture), and times
forward, backward and AdamW step under the recipe's precision, after two warm-up steps; prints the median with the
tokens and loss targets per step, and how many such steps fit in 30 minutes. Then times the agent acting in 20
CartPole-v1 envs at once (50 steps each), the cost of an evaluation rollout.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np
import torch

from multimodal.data.control import ENVS
from multimodal.pipelines.gato import GatoAgent
from training.tasks import build_task
from training.train import load_config


class _Single:
    """The two accelerator calls GatoTask.step makes, for one process without an Accelerator."""

    def no_sync(self, model):
        return contextlib.nullcontext()

    def backward(self, loss):
        loss.backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="configs/gato/mixed.yaml")
    parser.add_argument("--steps", type=int, default=8, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.recipe, ["data.num_workers=0", *args.overrides])
    task = build_task(cfg)
    cfg = task.cfg = task.resolve()
    model = task.build_model()
    task.prepare_data()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = iter(task.train_batches(model, 0))
    bf16 = cfg.train.precision == "bf16"
    times, tokens, targets = [], 0, 0
    for i in range(args.steps + 2):
        batch = next(batches)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            task.step(_Single(), model, batch)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - start)
            tokens += sum(int(p["padding_mask"].sum()) for p in batch["parts"].values())
            targets += sum(int(p["loss_mask"][:, 1:].sum()) for p in batch["parts"].values())
    step = statistics.median(times)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{cfg.model.name} ({params:.1f}M parameters), {cfg.train.precision}, batch {cfg.data.batch_size}, "
          f"context {model.cfg.context_length}, {torch.get_num_threads()} threads")  # fmt: skip
    print(f"train step   {step:.3f} s (median of {args.steps})   {tokens / args.steps:.0f} tokens, "
          f"{targets / args.steps:.0f} targets per step   {1800 / step:.0f} steps in 30 min")  # fmt: skip

    model.eval()
    agent = GatoAgent(model, task.tokenizer(model), ENVS["CartPole-v1"])
    policy = agent.policy()
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(50):
        policy(rng.normal(size=(20, 4)).astype(np.float32), np.arange(20))
    seconds = time.perf_counter() - start
    print(f"acting       {20 * 50 / seconds:.0f} actions/s (20 CartPole envs in lockstep, full context)")


if __name__ == "__main__":
    main()
