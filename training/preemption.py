"""Preemption: a scheduler's stop signal (SLURM, Kubernetes: SIGTERM, then SIGKILL 30-300 s later) ends a run
with a checkpoint instead of losing the steps since the last one.

The signal only sets a flag. At the next step boundary every process asks the others (one all-reduce of a flag),
and when any was signalled they all stop together: the step in progress is finished, a checkpoint is written (the
atomic ``step-N`` scheme: a SIGKILL during the write leaves the previous checkpoint intact) and the trainer exits
with :data:`PREEMPTED_EXIT`. A second signal changes nothing; data-loader workers ignore these signals.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

import torch
from accelerate import Accelerator

__all__ = ["PREEMPTED_EXIT", "Preemption"]

PREEMPTED_EXIT = 75  # sysexits.h EX_TEMPFAIL: stopped on request after a checkpoint; resume=latest continues it


class Preemption:
    """The stop signals of one trainer process: :meth:`install`, then :meth:`agreed` at every step boundary."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.signals = [getattr(signal, name) for name in names]
        self.received: str | None = None  # the first stop signal that reached this process
        self.stopping = False  # every process agreed to stop
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name
            print(f"{self.received}: stopping after this step with a checkpoint", file=sys.stderr, flush=True)

    def agreed(self, acc: Accelerator) -> bool:
        """Whether the run stops now: a process received a stop signal. Every process must call this at the same
        points of the loop (it is one all-reduce); once true it stays true without asking again."""
        if self.stopping:
            return True
        received = self.received is not None
        if acc.num_processes > 1:
            flag = torch.tensor([float(received)], device=acc.device)
            received = bool(acc.reduce(flag, reduction="sum").item() > 0)
        self.stopping = received
        return received
