"""Checkpoints that are complete or absent: written to a temporary folder, then renamed into place.

Layout of a run directory::

    config.yaml                  the resolved recipe
    model.safetensors            the newest weights (model_ema.safetensors too with EMA)
    metrics.jsonl                one JSON record per logged step
    checkpoints/step-00000500/   model.safetensors, accelerator/ (Accelerate save_state), state.json, and with
                                 train.fsdp sharded/ (each rank's slices of weights and optimizer state)
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

from multimodal.cli import one_line
from multimodal.io import atomic_path, atomic_write_text

from .sharding import full_state_dict, is_sharded, save_sharded

__all__ = [
    "CheckpointError",
    "find_latest",
    "list_checkpoints",
    "load_state",
    "remove_folder",
    "save_checkpoint",
    "save_weights",
]

_WRITE_ERRORS = (OSError, SafetensorError, RuntimeError, CheckpointException)  # the last: DCP's, any rank's
_STEP_DIR = re.compile(r"^(?:\.old-)?step-(\d{8})$")


def save_weights(
    model: nn.Module | dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """Weights only (of a model, or a state dict), as safetensors, through a temporary file and a rename, fsynced."""
    weights = model.state_dict() if isinstance(model, nn.Module) else model
    state = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    with atomic_path(path, fsync=True) as tmp:
        save_file(state, str(tmp), metadata=metadata or {"format": "pt"})


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first. Temporary folders of interrupted writes are ignored.

    A checkpoint is complete once its folder is named ``step-N``: everything is written into ``.tmp-step-N`` first
    and ``state.json`` last. Re-saving a step parks the old folder as ``.old-step-N`` for the moment between two
    renames; a run killed in that moment still finds it here.
    """
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found: dict[int, Path] = {}
    for d in sorted(root.iterdir(), key=lambda d: d.name.startswith(".")):  # step-N before .old-step-N
        m = _STEP_DIR.match(d.name)
        if m and d.is_dir() and (d / "state.json").is_file():
            found.setdefault(int(m.group(1)), d)
    return sorted(found.items())


def find_latest(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


class CheckpointError(RuntimeError):
    """A checkpoint that could not be written or may not be loaded; the message says what to do."""


def save_checkpoint(
    acc: Accelerator,
    run_dir: Path,
    *,
    step: int,
    model: nn.Module,
    ema: nn.Module | None,
    state: dict[str, Any],
    keep: int,
    optimizer: torch.optim.Optimizer | None = None,
) -> Path:
    """Save everything needed to resume at ``step``; every rank must call this. Returns the checkpoint path.

    ``state`` (plain JSON: counters, the LR scheduler's state) goes to ``state.json``; weights go to safetensors
    and the optimizer and RNG states through Accelerate, so that loading a checkpoint never unpickles code. A
    sharded model (``train.fsdp``) and its ``optimizer`` go to ``sharded/`` instead, each rank its slices, and
    ``model.safetensors`` holds the consolidated weights.
    A write that fails on any rank (a full disk) removes the partial folder on every rank and raises
    :class:`CheckpointError`; the previous checkpoints are untouched.
    """
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    error = _write_temporary(acc, tmp, model=model, ema=ema, state=state, optimizer=optimizer)
    if _failed_anywhere(acc, error is not None or not tmp.is_dir()):
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = find_latest(run_dir)
        kept = f"the previous checkpoint {previous} is intact" if previous else "there is no earlier checkpoint"
        cause = _describe(error) if error else "the write failed on another process"
        raise CheckpointError(
            f"could not write checkpoint step-{step:08d} in {root}: {cause}; {kept}. "
            "Free disk space (or set run.out_dir elsewhere) and continue with resume=latest"
        )
    error = _publish(tmp, final, run_dir, keep=keep) if acc.is_main_process else None
    if _failed_anywhere(acc, error is not None):
        raise CheckpointError(
            f"checkpoint {final} is complete, but copying its weights to {run_dir} failed: "
            f"{_describe(error) if error else 'on another process'}; free disk space and continue with resume=latest"
        )
    acc.wait_for_everyone()
    return final


def _write_temporary(
    acc: Accelerator,
    tmp: Path,
    *,
    model: nn.Module,
    ema: nn.Module | None,
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer | None,
) -> Exception | None:
    """Write the checkpoint into the temporary folder ``tmp`` (every rank); returns this rank's write error."""
    error: Exception | None = None
    sharded = is_sharded(model)
    weights = full_state_dict(model) if sharded else acc.unwrap_model(model)  # the former: every rank gathers
    if acc.is_main_process:
        try:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            _sweep(tmp.parent)
            tmp.mkdir()
        except _WRITE_ERRORS as e:
            error = e
    acc.wait_for_everyone()
    if error is not None or not tmp.is_dir():  # elsewhere than on the main process: it says why
        return error
    try:
        acc.save_state(str(tmp / "accelerator"))  # under FSDP only the RNG states: the model is not Accelerate's
        if sharded:
            state = {**state, "optimizer": save_sharded(tmp, model, optimizer)}
        if acc.is_main_process:
            save_weights(weights, tmp / "model.safetensors")
            if ema is not None:
                save_weights(ema, tmp / "model_ema.safetensors")
            atomic_write_text(tmp / "state.json", json.dumps(state, indent=2), fsync=True)
    except _WRITE_ERRORS as e:  # safetensors and torch.save report a failed write(2) in their own types
        return e
    return None


def _publish(tmp: Path, final: Path, run_dir: Path, *, keep: int) -> Exception | None:
    """Rename the complete checkpoint into place, drop the oldest beyond ``keep``, and copy its weights to the run
    directory (main process); returns the error of that copy."""
    root = final.parent
    stale = root / f".old-{final.name}"
    if final.exists():  # re-saving a step (e.g. after resuming at it): swap, never delete first
        os.rename(final, stale)
    os.rename(tmp, final)
    _fsync_dir(root)
    shutil.rmtree(stale, ignore_errors=True)
    for _, old in list_checkpoints(run_dir)[:-keep]:
        remove_folder(old)
    try:
        for name in ("model.safetensors", "model_ema.safetensors"):
            if (final / name).exists():
                with atomic_path(run_dir / name) as tmp_file:
                    shutil.copyfile(final / name, tmp_file)
    except _WRITE_ERRORS as e:
        return e
    return None


def load_state(checkpoint: Path) -> dict[str, Any]:
    """The ``state.json`` of a checkpoint (trainer counters and the LR scheduler's state).

    Checkpoints of older trainers kept that state as pickled Accelerate custom objects, which Accelerate unpickles
    with ``weights_only=False``; they are refused rather than loaded.
    """
    if any(Path(checkpoint, "accelerator").glob("custom_checkpoint_*.pkl")):
        raise CheckpointError(
            f"refusing to load {checkpoint}: it keeps trainer state in pickles (accelerator/custom_checkpoint_*.pkl, "
            "written by an older trainer), which could run code; its weights are in model.safetensors, but the run "
            "cannot be resumed: start a new one"
        )
    return json.loads((Path(checkpoint) / "state.json").read_text())


def _describe(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror} ({error.filename})" if error.filename else error.strerror
    return one_line(error)[:300]


def _failed_anywhere(acc: Accelerator, failed: bool) -> bool:
    """Whether any process failed (every process must call this)."""
    if acc.num_processes == 1:
        return failed
    flag = torch.tensor([float(failed)], device=acc.device)
    return bool(acc.reduce(flag, reduction="sum").item())


def remove_folder(folder: Path) -> None:
    """Delete ``folder`` by renaming it to ``.del-<name>`` first, so that a crash midway never leaves a folder of
    that name with files missing (a ``step-N`` checkpoint, say); the next save sweeps the remains."""
    doomed = folder.with_name(f".del-{folder.name}")
    shutil.rmtree(doomed, ignore_errors=True)  # what an earlier crash left
    os.rename(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _sweep(root: Path) -> None:
    """Remove what interrupted writes and deletions left behind (a parked ``.old-step-N`` returns to its name)."""
    for d in root.iterdir():
        if d.name.startswith((".tmp-step-", ".del-")):
            shutil.rmtree(d, ignore_errors=True)
        elif d.name.startswith(".old-step-"):
            final = root / d.name[len(".old-") :]
            if final.exists() or not (d / "state.json").is_file():
                shutil.rmtree(d, ignore_errors=True)
            else:
                os.rename(d, final)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
