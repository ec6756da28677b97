"""What the command-line entry points share: a user error is one line on stderr and exit status 2, not a traceback.

``main`` of ``multimodal.generate`` and of every ``eval`` CLI is ``return run_cli(run, parser, argv)``, where
``run(args)`` does the work and raises ``ValueError`` (``ConfigError``) or ``OSError`` for bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "USER_ERRORS",
    "HelpFormatter",
    "add_device_argument",
    "add_threads_argument",
    "busy_cores",
    "configure_threads",
    "keep_freed_memory",
    "one_line",
    "one_line_warnings",
    "resolve_device",
    "run_cli",
]

# What bad input raises: ValueError (ConfigError is one) for wrong values, OSError for paths (missing, a directory
# where a file belongs, no permission, a full disk). Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` of every command line: each option's help ends with ``(default: X)``, except where the default says
    nothing (None: the help tells what happens instead; a flag's False); description and epilog kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


def run_cli(run: Callable[[argparse.Namespace], Any], parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse ``argv`` and call ``run(args)``: a user error prints ``error: ...`` (one line) and returns 2, a warning
    prints ``warning: ...`` (one line). An ``--out`` that is an existing directory is refused before any work."""
    args = parser.parse_args(argv)
    with one_line_warnings():
        try:
            if getattr(args, "device", None) == "auto":
                args.device = resolve_device(args.device)
            if hasattr(args, "threads"):
                configure_threads(args.threads)
                keep_freed_memory()
            out = getattr(args, "out", None)
            if out is not None and Path(out).is_dir():
                raise IsADirectoryError(f"--out {out} is a directory; give a file path inside it")
            run(args)
        except USER_ERRORS as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            return 2
    return 0


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Within it, a warning prints as one ``warning: message`` line on stderr, without the source location."""
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        yield


def one_line(e: Exception | Warning | str) -> str:
    """A message's lines joined by spaces (a third-party message may span several)."""
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__


def _one_line_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: TextIO | None = None, line=None
) -> None:
    """``warnings.showwarning`` for a command line: ``warning: message`` without the source location."""
    print(f"warning: {one_line(message)}", file=file or sys.stderr)


def add_device_argument(parser: argparse.ArgumentParser, *, help: str = "where to run") -> None:
    """``--device``, ``auto`` by default: :func:`run_cli` makes that ``cuda`` when a GPU is present, else ``cpu``
    (deciding needs torch, which ``--help`` does not import)."""
    parser.add_argument("--device", default="auto", help=f"{help}; auto: cuda when a GPU is present, else cpu")


def resolve_device(device: str) -> str:
    """``device`` itself, or for ``auto`` the one :func:`add_device_argument` promises."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N|auto``: the CPU threads PyTorch computes with (see :func:`configure_threads`)."""
    parser.add_argument(
        "--threads",
        type=_threads,
        default="auto",  # argparse passes a string default through type: 0
        metavar="N|auto",
        help="CPU threads for PyTorch; auto takes the cores no other job is using right now, so a busy shared "
        "machine does not slow the work down by oversubscription; OMP_NUM_THREADS, when set, wins over auto",
    )


def _threads(text: str) -> int:
    if text == "auto":
        return 0
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads or 'auto', got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads >= 1 or 'auto', got {n}")
    return n


def configure_threads(threads: int) -> int:
    """Set PyTorch's CPU threads and return how many: ``threads`` if >= 1; with 0 (auto), ``OMP_NUM_THREADS`` if set,
    else the cores of this process's CPU set that no other job is busy on (at least 1).

    PyTorch's own default is every core, which on a machine another job shares oversubscribes them: spinning OpenMP
    threads wait on each other, and a run can take several times longer than with fewer threads."""
    import torch

    if threads < 0:
        raise ValueError(f"threads must be >= 1, or 0 for auto, got {threads}")
    if threads == 0:
        if os.environ.get("OMP_NUM_THREADS", "").strip():
            return torch.get_num_threads()
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores - round(busy_cores()))
        if threads < cores:
            print(
                f"note: {cores - threads} of {cores} cores busy with other work; computing with {threads} thread(s) "
                "(--threads N or train.threads=N to choose)",
                file=sys.stderr,
            )
    torch.set_num_threads(threads)
    return threads


# glibc's mallopt parameters (malloc.h): freed blocks stay in the heap up to the trim threshold; blocks from the
# mmap threshold up are mapped and unmapped on every allocation. 32 MiB is the largest mmap threshold glibc accepts.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_TRIM_BYTES, _MMAP_BYTES = 1 << 30, 1 << 25


def keep_freed_memory() -> bool:
    """Let glibc keep freed tensor memory for the next step instead of handing it back to the OS; False where the
    C library is not glibc (nothing is changed there).

    By default glibc maps every large allocation afresh and unmaps it when freed, and gives the top of its heap back
    beyond 128 KiB: a training step's activations and gradients, tens of MiB allocated and freed each step, then
    page-fault back in (the clip_nano shapes step, 2 threads: 15,000 minor faults and a median 196 ms a step; with
    this, 30 to 80 faults and 179 ms; six runs each).
    The cost: up to 1 GiB of freed memory stays with the process. ``train.keep_freed_memory=false`` leaves glibc as is.
    """
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_BYTES)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_BYTES))


def busy_cores(seconds: float = 0.25) -> float:
    """How many cores other processes keep busy now: non-idle CPU time over ``seconds``, from /proc/stat (0 where
    it cannot be read). This process sleeps meanwhile, so it does not count itself."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    cores = os.cpu_count() or 1
    elapsed = total1 - total0
    return 0.0 if elapsed <= 0 else cores * (elapsed - (idle1 - idle0)) / elapsed
