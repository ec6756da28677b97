"""What the command-line entry points share: a user error is one line on stderr and exit status 2, not a traceback.

``main`` of ``multimodal.generate`` and of every ``eval`` CLI is ``return run_cli(run, parser, argv)``, where
``run(args)`` does the work and raises ``ValueError`` (``ConfigError``) or ``OSError`` for bad input.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

__all__ = ["USER_ERRORS", "one_line", "run_cli"]

# What bad input raises: ValueError (ConfigError is one) for wrong values, OSError for paths (missing, a directory
# where a file belongs, no permission, a full disk). Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError)


def run_cli(run: Callable[[argparse.Namespace], Any], parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse ``argv`` and call ``run(args)``: a user error prints ``error: ...`` (one line) and returns 2, a warning
    prints ``warning: ...`` (one line). An ``--out`` that is an existing directory is refused before any work."""
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        try:
            out = getattr(args, "out", None)
            if out is not None and Path(out).is_dir():
                raise IsADirectoryError(f"--out {out} is a directory; give a file path inside it")
            run(args)
        except USER_ERRORS as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            return 2
    return 0


def one_line(e: Exception | Warning | str) -> str:
    """A message's lines joined by spaces (a third-party message may span several)."""
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__


def _one_line_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: TextIO | None = None, line=None
) -> None:
    """``warnings.showwarning`` for a command line: ``warning: message`` without the source location."""
    print(f"warning: {one_line(message)}", file=file or sys.stderr)
