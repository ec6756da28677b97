"""Where a run starts: afresh, or exactly where a checkpoint left it (weights, optimizer, scheduler, RNG, data
position, counters, EMA)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils.other import load as load_weights_only
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

from multimodal.cli import one_line
from multimodal.config import ConfigError

from .checkpoint import CheckpointError, find_latest, load_state, remove_folder
from .config import TrainConfig
from .ema import ModelEma
from .sharding import SHARDED_DIR, is_sharded, load_sharded

__all__ = ["TrainState", "clear_run", "match_world_size", "restore_checkpoint", "resume_checkpoint"]


@dataclass
class TrainState:
    """What the trainer needs besides weights and optimizer to resume exactly; saved with every checkpoint."""

    step: int = 0
    samples: int = 0  # training samples seen, all ranks
    batches: list[int] = field(default_factory=list)  # batches consumed, per rank
    skips: dict[str, Any] = field(default_factory=dict)  # SkipStats of all ranks, up to the checkpoint
    seconds: float = 0.0  # wall time spent in train() up to the checkpoint, over all invocations of a resumed run
    skipped_steps: int = 0  # steps whose update was skipped for a non-finite loss or gradient
    bad_streak: int = 0  # of them, how many in a row up to now
    threads: int = 0  # CPU threads the run computes with (0: not on the CPU); a resumed run keeps them, for exactness

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "samples": self.samples,
            "batches": list(self.batches),
            "skips": self.skips,
            "seconds": self.seconds,
            "skipped_steps": self.skipped_steps,
            "bad_streak": self.bad_streak,
            "threads": self.threads,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.samples = int(state["step"]), int(state["samples"])
        self.batches, self.skips = list(state["batches"]), dict(state["skips"])
        self.seconds = float(state.get("seconds", 0.0))  # absent in checkpoints of older versions
        self.skipped_steps, self.bad_streak = int(state.get("skipped_steps", 0)), int(state.get("bad_streak", 0))
        self.threads = int(state.get("threads", 0))


def resume_checkpoint(cfg: TrainConfig) -> Path | None:
    """The checkpoint to resume from, or None to start afresh; refuses to overwrite an existing run."""
    run_dir = cfg.run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} is a file; choose another run.name or run.out_dir")
    if cfg.resume is None:
        if (run_dir / "config.yaml").exists() and not cfg.run.overwrite:
            raise ConfigError(
                f"run directory {run_dir} already holds a run; continue it with resume=latest, "
                "choose another run.name / run.out_dir, or start afresh with run.overwrite=true"
            )
        return None
    if cfg.resume == "latest":
        return find_latest(run_dir)
    path = Path(cfg.resume)
    if not (path / "accelerator").is_dir() or not (path / "state.json").is_file():
        raise ConfigError(f"resume={cfg.resume!r} is not a complete checkpoint folder (checkpoints/step-*)")
    return path


def restore_checkpoint(
    acc: Accelerator,
    checkpoint: Path,
    *,
    scheduler: Any,
    state: TrainState,
    ema: ModelEma | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
) -> None:
    """Load a checkpoint into the prepared model and optimizer, the scheduler, the trainer state and the EMA.

    Nothing in it is unpickled beyond plain data and tensors (``torch.load(weights_only=True)`` inside Accelerate,
    safetensors and JSON here): a checkpoint that smuggles in code is refused, its code never run.
    """
    rng = checkpoint / "accelerator" / f"random_states_{acc.process_index}.pkl"
    _check_sharding(checkpoint, is_sharded(model))
    try:
        saved = load_state(checkpoint)  # first: it refuses the pickled trainer state of older checkpoints
        if rng.exists():  # Accelerate logs a failure to read it and goes on: resumption would not be exact
            load_weights_only(rng)  # Accelerate's torch.load(weights_only=True), numpy's RNG state allowed
        acc.load_state(str(checkpoint / "accelerator"))
        if is_sharded(model):
            load_sharded(checkpoint, model, optimizer, saved["optimizer"])
        state.load_state_dict(saved)
        scheduler.load_state_dict(saved["scheduler"])
        if ema is not None:
            ema.module.load_state_dict(load_file(checkpoint / "model_ema.safetensors"))
            ema.num_updates = int(saved["ema_updates"])
    except CheckpointError:
        raise
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"refusing to load {checkpoint}: a file in it holds pickled objects other than tensors and plain data, "
            f"which could run code ({reason[:200]}); resume only from checkpoints you trust"
        ) from None
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError, CheckpointException) as e:
        raise CheckpointError(
            f"cannot resume from {checkpoint}: it is damaged or belongs to another model or recipe "
            f"({type(e).__name__}: {one_line(e)[:300]}); resume from another checkpoint (resume=<folder>) "
            "or start afresh"
        ) from None


def _check_sharding(checkpoint: Path, sharded: bool) -> None:
    """A sharded checkpoint resumes only a sharded run, and the other way round; say which setting to use."""
    written_sharded = (checkpoint / SHARDED_DIR).is_dir()
    if written_sharded != sharded:
        written, setting = ("with", "true") if written_sharded else ("without", "false")
        raise CheckpointError(
            f"{checkpoint} was written {written} train.fsdp; resume it with train.fsdp={setting} (any number of "
            f"processes{'' if written_sharded else ' for a sharded run: start one afresh from its model.safetensors'})"
        )


def match_world_size(acc: Accelerator, state: TrainState) -> None:
    """A checkpoint of another number of processes restarts every rank's stream at the furthest batch count."""
    if len(state.batches) != acc.num_processes:
        acc.print(
            f"warning: checkpoint written by {len(state.batches)} processes, resuming with {acc.num_processes}: "
            "the data stream restarts at the same global sample count but not the same samples"
        )
        state.batches = [max(state.batches)] * acc.num_processes


def clear_run(run_dir: Path) -> None:
    """What an earlier run left in ``run_dir`` (``run.overwrite=true``): its checkpoints, which ``resume=latest``
    would otherwise find, its weights, metrics, results and sample keys. TensorBoard logs stay."""
    for name in ("metrics.jsonl", "results.json", "model.safetensors", "model_ema.safetensors"):
        (run_dir / name).unlink(missing_ok=True)
    for name in ("checkpoints", "keys"):
        if (run_dir / name).is_dir():
            remove_folder(run_dir / name)
