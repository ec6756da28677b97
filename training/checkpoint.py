"""Checkpoints that are complete or absent: written to a temporary folder, then renamed into place.

Layout of a run directory::

    config.yaml                  the resolved recipe
    model.safetensors            the newest weights (model_ema.safetensors too with EMA)
    metrics.jsonl                one JSON record per logged step
    checkpoints/step-00000500/   model.safetensors, accelerator/ (Accelerate save_state), state.json
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from safetensors.torch import save_file
from torch import nn

__all__ = ["atomic_write_text", "find_latest", "list_checkpoints", "save_checkpoint", "save_weights"]

_STEP_DIR = re.compile(r"^step-(\d{8})$")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, fsynced."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Weights only, as safetensors, through a temporary file and a rename."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata=metadata or {"format": "pt"})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first. Temporary folders of interrupted writes are ignored."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = _STEP_DIR.match(d.name)
        if m and d.is_dir() and (d / "state.json").is_file():
            found.append((int(m.group(1)), d))
    return sorted(found)


def find_latest(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def save_checkpoint(
    acc: Accelerator,
    run_dir: Path,
    *,
    step: int,
    model: nn.Module,
    ema: nn.Module | None,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Save everything needed to resume at ``step``; every rank must call this. Returns the checkpoint path."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    if acc.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    acc.wait_for_everyone()
    acc.save_state(str(tmp / "accelerator"))
    if acc.is_main_process:
        unwrapped = acc.unwrap_model(model)
        save_weights(unwrapped, tmp / "model.safetensors")
        if ema is not None:
            save_weights(ema, tmp / "model_ema.safetensors")
        atomic_write_text(tmp / "state.json", json.dumps(state, indent=2))
    acc.wait_for_everyone()
    if acc.is_main_process:
        stale = root / f".old-step-{step:08d}"
        if final.exists():  # re-saving a step (e.g. after resuming at it): swap, never delete first
            os.rename(final, stale)
        os.rename(tmp, final)
        shutil.rmtree(stale, ignore_errors=True)
        for name in ("model.safetensors", "model_ema.safetensors"):
            if (final / name).exists():
                shutil.copyfile(final / name, run_dir / f".{name}.tmp")
                os.replace(run_dir / f".{name}.tmp", run_dir / name)
        for _, old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final
