"""The two ways a run goes wrong mid-step and what the trainer does about them: a non-finite loss or gradient
(the step is skipped; too many in a row stop the run) and a process of the run that went away (every survivor
says so in words a user can act on)."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from torch.distributed.tensor import DTensor

from .checkpoint import find_latest
from .resume import TrainState

__all__ = ["PeerLostError", "StepGuard", "TrainingError"]


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. its loss stays non-finite); the message says what to do."""


class PeerLostError(TrainingError):
    """Another process of the run went away mid-collective; each survivor reports it."""

    @staticmethod
    def caused(error: RuntimeError) -> bool:
        """Whether a collective failed because another process went away (gloo and NCCL say so only in words)."""
        return isinstance(error, torch.distributed.DistError) or bool(
            re.search(r"Connection (reset|closed) by peer|Broken pipe|NCCL communicator was aborted", str(error))
        )

    @classmethod
    def from_error(cls, error: RuntimeError, acc: Accelerator, *, step: int, run_dir: Path) -> PeerLostError:
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        cause = re.sub(r"^\[[^\]]*gloo[^\]]*\] ", "", text)[:200]
        return cls(
            f"process {acc.process_index} of {acc.num_processes} lost contact with the others at step {step + 1} "
            f"({cause}); another process probably died: see its own error above. "
            f"Resume with resume=latest (from {find_latest(run_dir) or 'the start: no checkpoint yet'})"
        )


class StepGuard:
    """Clips the gradients and skips an update whose loss or gradient is not finite on any process.

    A skipped step also puts back the batch-norm statistics its forward pass moved. After ``max_bad_steps`` skipped
    steps in a row the run stops with a :class:`TrainingError` naming the last good checkpoint.
    """

    def __init__(
        self, acc: Accelerator, model: nn.Module, *, clip: float | None, max_bad_steps: int, run_dir: Path
    ) -> None:
        self.acc, self.clip, self.max_bad_steps, self.run_dir = acc, clip, max_bad_steps, run_dir
        self.params = [p for p in model.parameters() if p.requires_grad]
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)]
        self.running_stats = [b for m in norms for b in m.buffers()]
        self.saved_stats: list[torch.Tensor] = []

    def snapshot(self) -> None:
        """Remember the running statistics before a step's forward passes."""
        self.saved_stats = [b.clone() for b in self.running_stats]

    def check(self, losses: list[float]) -> tuple[str | None, float | None]:
        """Clip the gradients; return what is not finite in this step on any process ("loss", "gradient" or None)
        and the gradient norm before clipping (None under fp16 without clipping).

        The gradient norm (clipped to ``clip``) is taken after the gradients are reduced, so every process sees the
        same; the losses are local and their verdict is summed across processes. Under fp16 the gradient scaler
        already skips overflowing steps (lowering its scale), so only the loss is checked there.
        """
        acc, norm = self.acc, None
        if self.clip:
            norm = _value(acc.clip_grad_norm_(self.params, self.clip))
        elif acc.scaler is None:
            norm = _value(torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None]))
        flags = [not all(math.isfinite(v) for v in losses), acc.scaler is None and not math.isfinite(norm)]
        if acc.num_processes > 1:
            flags = (
                acc.reduce(torch.tensor(flags, dtype=torch.float32, device=acc.device), reduction="sum") > 0
            ).tolist()
        return ("loss" if flags[0] else "gradient" if flags[1] else None), norm

    def skip(self, state: TrainState, fault: str) -> None:
        """Count a skipped step (its update was not applied) and restore the statistics; warn, or raise
        :class:`TrainingError` when it is the ``max_bad_steps``-th in a row."""
        state.skipped_steps += 1
        for b, before in zip(self.running_stats, self.saved_stats, strict=True):
            b.copy_(before)
        state.bad_streak += 1
        limit = self.max_bad_steps
        if state.bad_streak < limit:
            self.acc.print(
                f"warning: step {state.step}: non-finite {fault}, update skipped "
                f"({state.bad_streak} in a row; the run stops at {limit})",
                file=sys.stderr,
            )
            return
        raise TrainingError(
            f"stopped at step {state.step}: {limit} steps in a row ({state.step - limit + 1}-{state.step}) had a "
            f"non-finite loss or gradient and were skipped; nothing was saved after them, the last good checkpoint "
            f"is {find_latest(self.run_dir) or 'none (no checkpoint was written yet)'}. Lower optim.lr, set "
            "optim.grad_clip, or check the data of those steps, then continue with resume=latest"
        )


def _value(norm: torch.Tensor) -> float:
    """A gradient norm as a number; under FSDP it is a DTensor over the shards' norms."""
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
