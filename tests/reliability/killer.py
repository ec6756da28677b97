"""Run ``training.train``, SIGKILLed at a chosen point: ``python tests/reliability/killer.py POINT:N RECIPE [k=v]``.

The N-th time the run reaches POINT it kills itself with SIGKILL, as the kernel or a scheduler would, leaving
behind whatever that point leaves half done. ``POINT:N:TERM`` sends SIGTERM instead (a scheduler's request to
stop; the run goes on to a checkpoint), ``POINT:N:TERM2`` sends it twice in a row. ``LAUNCHER`` and ``LAUNCHER2``
send SIGTERM (once, twice) to the parent process instead, from rank 0 only: run under ``accelerate launch``, that is
the launcher, which passes the signal on to every worker as a scheduler's would. POINT is one of:

    step        the start of an optimizer step's check, gradients computed, nothing applied yet
    save_state  a checkpoint's Accelerate state written, its weights and state.json not yet
    weights     a checkpoint's weights file written halfway (torn) into the temporary folder
    rename      a checkpoint complete in its temporary folder, the rename into place not done
    remove      an old checkpoint renamed for deletion and half deleted
    copy        the run's top-level model.safetensors half copied from the new checkpoint
    metrics     half a line appended to metrics.jsonl
    eval        the start of an evaluation (TERM only)
    data        the start of data preparation, before the first step (TERM only)

``none:0`` runs without a kill (the reference run goes through the same entry point).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import accelerate

import training.checkpoint as checkpoint
import training.metrics as metrics
import training.train as trainer
from training.guard import StepGuard
from training.tasks.base import Task
from training.trainer import Trainer

SIGNALS = [signal.SIGKILL]  # what _die sends; set from the command line
TO_LAUNCHER = [False]  # whether _die signals the parent process (from rank 0) rather than this one


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    if TO_LAUNCHER[0] and os.environ.get("RANK", "0") != "0":
        return
    pid = os.getppid() if TO_LAUNCHER[0] else os.getpid()
    for sig in SIGNALS:
        os.kill(pid, sig)


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(max(1, os.fstat(f.fileno()).st_size // 2))


def arm(point: str, n: int) -> None:
    calls = 0

    def reached() -> bool:
        nonlocal calls
        calls += 1
        return calls == n

    if point == "step":
        check = StepGuard.check

        def check_step(*args, **kwargs):
            if reached():
                _die()
            return check(*args, **kwargs)

        StepGuard.check = check_step
    elif point == "save_state":
        save_state = accelerate.Accelerator.save_state

        def save_then_die(self, *args, **kwargs):
            out = save_state(self, *args, **kwargs)
            if reached():
                _die()
            return out

        accelerate.Accelerator.save_state = save_then_die
    elif point == "weights":
        save_file = checkpoint.save_file

        def torn_save_file(tensors, filename, *args, **kwargs):
            save_file(tensors, filename, *args, **kwargs)
            if reached():
                _truncate(Path(filename))
                _die()

        checkpoint.save_file = torn_save_file
    elif point == "rename":
        rename = os.rename

        def die_before_rename(src, dst, *args, **kwargs):
            if Path(src).name.startswith(".tmp-step-") and reached():
                _die()
            return rename(src, dst, *args, **kwargs)

        checkpoint.os.rename = die_before_rename
    elif point == "remove":
        remove = checkpoint.remove_folder

        def half_removed(folder: Path) -> None:
            if not reached():
                return remove(folder)
            doomed = folder.with_name(f".del-{folder.name}")
            os.rename(folder, doomed)
            shutil.rmtree(doomed / "accelerator")
            _die()

        checkpoint.remove_folder = half_removed
    elif point == "copy":
        copyfile = shutil.copyfile

        def torn_copy(src, dst, *args, **kwargs):
            out = copyfile(src, dst, *args, **kwargs)
            if Path(dst).name == ".model.safetensors.tmp" and reached():
                _truncate(Path(dst))
                _die()
            return out

        checkpoint.shutil.copyfile = torn_copy
    elif point == "metrics":
        log = metrics.MetricsLog.log

        def torn_log(self, step, values):
            if reached():
                with open(self.path, "a") as f:
                    f.write(f'{{"step": {step}, "train/lo')
                _die()
            return log(self, step, values)

        metrics.MetricsLog.log = torn_log
    elif point in ("eval", "data"):
        owner, name = (Trainer, "evaluate") if point == "eval" else (Task, "prepare_data")
        original = getattr(owner, name)

        def signalled(self):
            if reached():
                _die()
            return original(self)

        setattr(owner, name, signalled)
    elif point != "none":
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    point, n, how = sys.argv[1].split(":") + ["1", "KILL"][len(sys.argv[1].split(":")) - 1 :]
    SIGNALS[:] = {"KILL": [signal.SIGKILL], "TERM": [signal.SIGTERM], "TERM2": [signal.SIGTERM] * 2}.get(
        how.replace("LAUNCHER", "TERM"), []
    )
    if not SIGNALS:
        raise SystemExit(f"unknown signal {how!r}: KILL, TERM, TERM2, LAUNCHER or LAUNCHER2")
    TO_LAUNCHER[0] = how.startswith("LAUNCHER")
    arm(point, int(n or 1))
    sys.exit(trainer.main(sys.argv[2:]))
