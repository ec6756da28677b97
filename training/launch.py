"""How the trainer meets the launcher: the Accelerator of a recipe, a warning for launches Accelerate silently
turns into one process, a refusal of workers left alone, a check, from inside the run, of the process group, and a
free port for a launch's rendezvous."""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

from .config import TrainConfig

__all__ = [
    "LaunchError",
    "check_world",
    "free_port",
    "make_accelerator",
    "refuse_lone_worker",
    "warn_ignored_num_processes",
]

# MPI launchers' world sizes, which Accelerate reads before WORLD_SIZE when it decides whether to start gloo.
MPI_WORLD_SIZES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


class LaunchError(ValueError):
    """The processes of a launch do not form the world it asked for. The message says how to launch instead."""


def make_accelerator(cfg: TrainConfig, *, find_unused_parameters: bool = False) -> Accelerator:
    """The Accelerator of a recipe. Under ``train.fsdp`` it launches and reduces, and the trainer shards the model
    itself, with one policy on GPUs and CPUs: an Accelerate launch config asking for FSDP is taken as that request,
    and refused without it. ``find_unused_parameters``: DDP looks, each step, for parameters the synchronised backward
    did not reach (a task whose steps may leave some without a gradient needs it)."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        if not cfg.train.fsdp:
            raise LaunchError(
                "the launch config asks for FSDP (distributed_type: FSDP) but the recipe does not: add train.fsdp=true"
                " (the trainer shards every model family with its own per-block policy, on GPUs and CPUs alike)"
            )
        del os.environ["ACCELERATE_USE_FSDP"]  # Accelerate would otherwise ignore it on a CPU and wrap on a GPU
    run_dir = cfg.run_dir
    # Without a GPU, cpu=True turns a torchrun launch (`--multi_gpu`) into gloo multi-CPU instead of N lone runs.
    cpu = cfg.train.cpu or not torch.cuda.is_available()
    return Accelerator(
        cpu=cpu,
        mixed_precision=cfg.train.precision,
        gradient_accumulation_steps=cfg.optim.accum,
        log_with=list(cfg.train.log_with) or None,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)]
        if find_unused_parameters
        else None,
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


def refuse_lone_worker(acc: Accelerator) -> None:
    """Stop a worker whose environment asks for ``WORLD_SIZE`` > 1 but whom Accelerate left alone (no process group):
    each such worker would train the whole run by itself, all of them into one run directory."""
    asked = int(os.environ.get("WORLD_SIZE", "1"))
    if asked <= 1 or acc.num_processes > 1:
        return
    why = ["LOCAL_RANK is unset"] if "LOCAL_RANK" not in os.environ else []
    why += [
        f"{k}={os.environ[k]} is read first" for k in MPI_WORLD_SIZES if os.environ.get(k, str(asked)) != str(asked)
    ]
    reason = f" ({'; '.join(why)})" if why else ""
    raise LaunchError(
        f"WORLD_SIZE={asked} in the environment, but Accelerate started no process group{reason}, so this process "
        "would train alone: start the workers with "
        f"`accelerate launch --multi_gpu --num_processes {asked} -m training.train ...` (it sets RANK, LOCAL_RANK and "
        "WORLD_SIZE; one launcher per machine, with --num_machines and --machine_rank) or unset WORLD_SIZE"
    )


def check_world(acc: Accelerator) -> int:
    """One all-reduce (sum) of 1 and of the rank id over the process group: every one of the ``num_processes``
    processes must answer, with the ids 0..N-1 (summing to N(N-1)/2). Returns how many answered, the world size
    proven from inside the run; raises :class:`LaunchError` if the group is not the one the launch asked for."""
    n = acc.num_processes
    count, rank_sum = acc.reduce(torch.tensor([1, acc.process_index], device=acc.device), reduction="sum").tolist()
    if (count, rank_sum) != (n, n * (n - 1) // 2):
        raise LaunchError(
            f"the process group is not the one launched: {count} process(es) with rank ids summing to {rank_sum} "
            f"answered an all-reduce, not {n} summing to {n * (n - 1) // 2}; give every machine's `accelerate launch` "
            "the same --num_processes (all processes) and --num_machines, and each a --machine_rank of its own"
        )
    return count


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port of ``host`` that nothing listens on now, for a launch's rendezvous (``--main_process_port``,
    ``MASTER_PORT``). Another process may take it before the launch binds it; on one machine that is rare."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
