"""What a run reports: ``metrics.jsonl`` and the trackers, the window of training scalars between two log lines,
and the one-line evaluation summary."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from multimodal.io import atomic_write_text

__all__ = ["MetricsLog", "RunningMeans", "format_eval", "record_step"]


class MetricsLog:
    """``metrics.jsonl`` on the main process, plus the Accelerate trackers.

    A resumed run first drops the records after its checkpoint's step (they will be recomputed), and the line a
    crash cut short.
    """

    def __init__(self, acc: Accelerator, path: Path, resume_step: int | None) -> None:
        self.acc, self.path = acc, path
        if acc.is_main_process and resume_step is not None and path.exists():
            steps = [(line, record_step(line)) for line in path.read_text().splitlines()]
            kept = [line for line, step in steps if step is not None and step <= resume_step]
            atomic_write_text(path, "".join(line + "\n" for line in kept), fsync=True)

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.acc.is_main_process:
            return
        record = {"step": step, **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.acc.log({k: v for k, v in values.items() if isinstance(v, (int, float))}, step=step)


def record_step(line: str) -> int | None:
    """The step of a ``metrics.jsonl`` line; None for a line a crash cut short."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


class RunningMeans:
    """Sums of the logged scalars of the micro-batches since the last log line, their count, the samples and the
    skipped steps; :meth:`means` averages them over every process and starts a new window."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = self.samples = self.skipped_steps = 0
        self.started = time.perf_counter()

    def add(self, micro_batches: list[dict[str, float]]) -> None:
        """The logs of one good step's micro-batches."""
        for logs in micro_batches:
            for k, v in logs.items():
                self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += len(micro_batches)

    def means(self, acc: Accelerator, lr: float) -> tuple[dict[str, float], int]:
        """``train/<name>`` means over all processes, ``train/lr``, ``train/samples_per_s`` (and
        ``train/skipped_steps`` when some were), and the samples of the window, which ends here; every process
        must call this at the same step."""
        totals = sum_across(acc, {**self.sums, "_count": self.count, "_samples": self.samples})
        n, samples = max(totals.pop("_count"), 1.0), totals.pop("_samples")
        out = {f"train/{k}": v / n for k, v in totals.items()}
        out["train/lr"] = lr
        out["train/samples_per_s"] = samples / max(time.perf_counter() - self.started, 1e-9)
        if self.skipped_steps:
            out["train/skipped_steps"] = self.skipped_steps
        self.reset()
        return out, int(samples)


def sum_across(acc: Accelerator, values: dict[str, float]) -> dict[str, float]:
    """Sum scalars over all processes (every process must call this at the same step)."""
    keys = sorted(values)
    local = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=acc.device)
    total = acc.reduce(local, reduction="sum") if acc.num_processes > 1 else local
    return {k: total[i].item() for i, k in enumerate(keys)}


def _eval_name(key: str) -> str:
    """``eval/x`` -> ``x``, ``eval_ema/x`` -> ``ema x``."""
    group, metric = key.split("/", 1)
    return f"ema {metric}" if group == "eval_ema" else metric


def format_eval(step: int, results: dict[str, Any], split: str | None) -> str:
    """One line of evaluation results; it names the held-out split unless the metric names already do."""
    parts = [
        f"{_eval_name(k)} {v:.4f}" if isinstance(v, float) else f"{_eval_name(k)} {v}" for k, v in results.items()
    ]
    names = [k.split("/", 1)[1] for k in results]
    where = "" if not split or any(n.startswith(f"{split}_") for n in names) else f" on the held-out '{split}' split"
    return f"eval{where} @ step {step}: " + ", ".join(parts)
