"""How the trainer meets the launcher: the Accelerator of a recipe, and a warning for launches Accelerate
silently turns into one process."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration

from .config import TrainConfig

__all__ = ["make_accelerator", "warn_ignored_num_processes"]


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    run_dir = cfg.run_dir
    # Without a GPU, cpu=True turns a torchrun launch (`--multi_gpu`) into gloo multi-CPU instead of N lone runs.
    cpu = cfg.train.cpu or not torch.cuda.is_available()
    return Accelerator(
        cpu=cpu,
        mixed_precision=cfg.train.precision,
        gradient_accumulation_steps=cfg.optim.accum,
        log_with=list(cfg.train.log_with) or None,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
    )


def warn_ignored_num_processes() -> None:
    """`accelerate launch --cpu --num_processes N` starts one process; say so instead of training silently alone."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() != "true" or "WORLD_SIZE" in os.environ:
        return
    try:
        parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return
    args = [a.decode(errors="replace") for a in parent]
    for i, a in enumerate(args):
        m = re.fullmatch(r"--num_processes(?:=(\d+))?", a)
        n = m and (m.group(1) or (args[i + 1] if i + 1 < len(args) else "1"))
        if n and n.isdigit() and int(n) > 1:
            print(
                f"warning: `accelerate launch --cpu --num_processes {n}` starts ONE process (Accelerate ignores "
                f"--num_processes with --cpu). For {n} CPU processes (gloo) use "
                f"`accelerate launch --multi_gpu --num_processes {n}` or --config_file configs/accelerate/cpu.yaml",
                file=sys.stderr,
            )
