"""The README's commands, extracted and run after ``make demo``: ``make readme-check`` (``python -m tests.readme``).

Every shell line of the README's ``bash`` blocks and every ``python`` block is run, in README order, in a scratch
folder that holds a copy of the demo's runs (``runs/``) and links to ``configs/``, ``datasets/``, ``bench/`` and
``data/``, so nothing of yours is touched. Lines run as written, with two exceptions, both printed:

- training commands (``training.train``) get ``train.steps=2`` appended, so that a recipe of 15 minutes checks in
  seconds that its config, data, model and run folder are right, and leaves weights for the commands after it;
- a line or block holding a placeholder (``/path/to/``, ``[key=value ...]``) is a template: it is not run.

The quick start's own ``make demo`` / ``make test`` are not run again. Exit status 1 if any command failed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLACEHOLDERS = ("/path/to/", "[key=value ...]", "HOST", "$RANK", "$MASTER")
SHORTEN = ["train.steps=2"]


@dataclass(frozen=True)
class Command:
    """One runnable piece of the README: a shell line (``kind="bash"``) or a python block."""

    kind: str
    text: str
    line: int  # where it starts in README.md

    @property
    def template(self) -> bool:
        return any(p in self.text for p in PLACEHOLDERS)

    @property
    def trains(self) -> bool:
        return self.kind == "bash" and "training.train" in self.text

    @property
    def argv(self) -> list[str]:
        """The shell line split into words, comments dropped."""
        return shlex.split(self.text, comments=True)


def readme_commands(readme: Path = REPO / "README.md") -> list[Command]:
    """Every shell line of the ``bash`` blocks (continuation lines joined) and every ``python`` block, in order."""
    text = readme.read_text()
    commands = []
    for block in re.finditer(r"^```(bash|python)\n(.*?)^```", text, re.S | re.M):
        kind, body = block.groups()
        first = text[: block.start(2)].count("\n") + 1
        if kind == "python":
            commands.append(Command("python", body, first))
            continue
        pending, start = "", first
        for offset, raw in enumerate(body.splitlines()):
            if not pending:
                start = first + offset
            pending += raw.rstrip()
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            if shlex.split(pending, comments=True) and not pending.lstrip().startswith("make "):
                commands.append(Command("bash", pending.strip(), start))
            pending = ""
    return commands


def _scratch(runs: Path) -> Path:
    """A folder to run the commands in: a copy of ``runs`` and links to the repository's inputs."""
    work = Path(tempfile.mkdtemp(prefix="readme-check-"))
    shutil.copytree(runs, work / "runs", symlinks=True)
    for name in ("configs", "datasets", "bench", "data", "tests"):
        if (REPO / name).exists():
            (work / name).symlink_to(REPO / name)
    return work


def run(command: Command, work: Path, *, timeout: int) -> tuple[int, float, str]:
    """Run one command in ``work``; returns (exit status, seconds, the end of its output)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    if command.kind == "python":
        argv = [sys.executable, "-c", command.text]
    else:
        argv = command.argv + (SHORTEN if command.trains else [])
        argv = [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]
    start = time.perf_counter()
    try:
        done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        code, output = 124, f"timed out after {timeout} s: {e.stdout or ''}{e.stderr or ''}"
    return code, time.perf_counter() - start, output[-1500:]


def main() -> int:
    runs = REPO / "runs"
    if not (runs / "clip-shapes-demo" / "model.safetensors").is_file():
        print("error: no demo runs under runs/: run `make demo` first", file=sys.stderr)
        return 2
    work = _scratch(runs)
    failed = 0
    print(f"running the README's commands in {work}")
    for command in readme_commands():
        shown = command.text if command.kind == "bash" else f"[python block, {command.text.count(chr(10))} lines]"
        if command.template:
            print(f"  template  README.md:{command.line}: {shown}")
            continue
        code, seconds, output = run(command, work, timeout=900)
        note = f" (+ {' '.join(SHORTEN)})" if command.trains else ""
        status = "ok" if code == 0 else f"FAILED {code}"
        print(f"  {status:<9} README.md:{command.line}: {shown}{note}  [{seconds:.0f} s]")
        if code != 0:
            failed += 1
            print("    " + output.replace("\n", "\n    "))
    shutil.rmtree(work, ignore_errors=True)
    print(f"{failed} failed" if failed else "every command ran")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
