"""Two gloo processes on the CPU; one is SIGKILLed mid-training. The other must notice, say so in one line and
exit non-zero within a bounded time instead of hanging in a collective."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from subprocess import PIPE

import pytest

from tests.conftest import REPO, tiny_recipe, write_recipe
from training.launch import free_port

BOUND_S = 60  # the survivor must be gone this long after the kill


def _long_recipe(tiny_shapes: Path, tmp_path: Path) -> Path:
    recipe = tiny_recipe(
        tiny_shapes, tmp_path / "run",
        train={"steps": 100_000, "log_every": 1, "checkpoint_every": 0}, data={"num_workers": 0},
    )  # fmt: skip
    return write_recipe(tmp_path / "r.yaml", recipe)


def _wait_for_steps(run: Path, procs: list[subprocess.Popen], steps: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    metrics = run / "metrics.jsonl"
    while time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= steps:
            return
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"a process ended before training: {p.communicate()[1][-3000:]}")
        time.sleep(0.2)
    raise AssertionError("training did not start in time")


def _start_pair(recipe: Path, tmp_path: Path, *overrides: str) -> list[subprocess.Popen]:
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = {
            **os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
            "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2",
        }  # fmt: skip
        command = [sys.executable, "-m", "training.train", str(recipe), *overrides]
        procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=PIPE, stderr=PIPE, text=True))
    return procs


@pytest.mark.parametrize("victim", [1, 0])
def test_the_survivor_exits_with_a_clear_error_when_its_peer_dies(tiny_shapes, tmp_path, victim, faults):
    recipe = _long_recipe(tiny_shapes, tmp_path)
    procs = _start_pair(recipe, tmp_path)
    try:
        _wait_for_steps(tmp_path / "run", procs, steps=3)
        procs[victim].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        survivor = procs[1 - victim]
        _, err = survivor.communicate(timeout=BOUND_S)
        waited = time.monotonic() - killed
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert survivor.returncode == 1, err[-3000:]
    assert waited < BOUND_S
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err[-3000:]
    assert f"error: process {1 - victim} of 2 lost contact with the others at step " in errors[0]
    assert "resume=latest" in errors[0]
    assert not (tmp_path / "run" / "results.json").exists()
    faults("one of two gloo processes SIGKILLed", f"survivor exited with a one-line error in {waited:.1f} s")


@pytest.mark.slow
def test_accelerate_launch_ends_in_bounded_time_when_a_worker_dies(tiny_shapes, tmp_path, faults):
    recipe = _long_recipe(tiny_shapes, tmp_path)
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    launcher = subprocess.Popen(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
         "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), "-m", "training.train",
         str(recipe), "train.record_keys=true"],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        _wait_for_steps(tmp_path / "run", [launcher], steps=3)
        worker = _worker_pid(launcher.pid, rank=1)
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()
        _, err = launcher.communicate(timeout=BOUND_S)
        waited = time.monotonic() - killed
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.communicate()
    assert launcher.returncode != 0 and waited < BOUND_S, err[-3000:]
    faults("one of two `accelerate launch` workers SIGKILLed", f"the launch exited non-zero in {waited:.1f} s")


def _worker_pid(launcher: int, rank: int) -> int:
    """The pid of the training process of ``rank`` under an ``accelerate launch`` (found by its RANK variable)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"training.train" in cmd and f"RANK={rank}".encode() in env and b"LOCAL_RANK=" in b"".join(env):
            return int(proc.name)
    raise AssertionError(f"no training process of rank {rank} under launcher {launcher}")
