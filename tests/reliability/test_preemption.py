"""A scheduler's stop signal (SIGTERM) at five points of a real run: each time the run finishes the step in
progress, writes a complete checkpoint and exits with 75; resumed each time with ``resume=latest``, it ends with
the same weights, bit for bit, as a run nobody stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, tiny_recipe, write_recipe
from tests.reliability.test_crash_resume import (
    CHECKPOINT_FILES,
    STEPS,
    _assert_same_weights,
    _last_logged_step,
    _run,
)
from tests.reliability.test_distributed_faults import _start_pair, _wait_for_steps
from training.checkpoint import list_checkpoints
from training.launch import free_port
from training.preemption import PREEMPTED_EXIT

# Each signal lands in the run the previous one stopped: (point, where it lands, the step the run stops at).
STOPS = [
    ("data:1:TERM", "SIGTERM: during data start-up, before the first step", 0),
    ("step:3:TERM", "SIGTERM: mid-step, gradients computed", 3),
    ("eval:1:TERM", "SIGTERM: mid-evaluation", 6),
    ("save_state:1:TERM", "SIGTERM: mid-checkpoint write", 8),
    ("step:2:TERM2", "SIGTERM twice in a row, mid-step", 10),
]


def _recipe(tiny_shapes, tmp_path, name: str):
    recipe = tiny_recipe(
        tiny_shapes, tmp_path / name, data={"num_workers": 1},
        train={"steps": STEPS, "checkpoint_every": 4, "eval_every": 6, "log_every": 1, "ema_decay": 0.9},
    )  # fmt: skip
    return write_recipe(tmp_path / f"{name}.yaml", recipe)


@pytest.fixture(scope="module")
def uninterrupted(tiny_shapes, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("uninterrupted")
    proc = _run(_recipe(tiny_shapes, tmp, "run"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run"


def test_stop_signals_at_five_points_lose_nothing(uninterrupted, tiny_shapes, tmp_path, faults):
    recipe, run = _recipe(tiny_shapes, tmp_path, "run"), tmp_path / "run"
    for stop, where, step in STOPS:
        proc = _run(recipe, stop)
        assert proc.returncode == PREEMPTED_EXIT, f"{stop}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
        assert f"stopped by SIGTERM at step {step} of {STEPS}" in proc.stdout, proc.stdout[-2000:]
        assert proc.stderr.count("SIGTERM: stopping after this step with a checkpoint") == 1, proc.stderr[-2000:]
        assert list_checkpoints(run)[-1][0] == step == _last_logged_step(run), stop  # not one step lost
        for _, folder in list_checkpoints(run):
            assert all((folder / f).is_file() for f in CHECKPOINT_FILES), f"{stop}: {folder.name} incomplete"
        assert not (run / "results.json").exists()  # the run is not over
        faults(where, "nothing: the step in progress finished and was checkpointed; final weights bitwise equal")
    proc = _run(recipe)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "results.json").read_text())["step"] == STEPS
    _assert_same_weights(uninterrupted, run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == list(range(1, STEPS + 1))


def _pair_recipe(tiny_shapes, tmp_path, name: str):
    recipe = tiny_recipe(
        tiny_shapes, tmp_path / name, data={"num_workers": 0},
        train={"steps": 30, "checkpoint_every": 0, "log_every": 1},
    )  # fmt: skip
    return write_recipe(tmp_path / f"{name}.yaml", recipe)


def _finish(procs: list[subprocess.Popen], timeout: float = 120) -> list[tuple[int, str, str]]:
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
        return [(p.returncode, *output) for p, output in zip(procs, outputs, strict=True)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


def test_a_stop_signal_to_one_of_two_processes_stops_both_at_one_step(tiny_shapes, tmp_path, faults):
    straight = _finish(_start_pair(_pair_recipe(tiny_shapes, tmp_path, "straight"), tmp_path))
    assert [code for code, _, _ in straight] == [0, 0], straight[0][2][-3000:]
    recipe, run = _pair_recipe(tiny_shapes, tmp_path, "run"), tmp_path / "run"
    procs = _start_pair(recipe, tmp_path)
    _wait_for_steps(run, procs, steps=3)
    procs[1].send_signal(signal.SIGTERM)
    (code0, out0, err0), (code1, _, err1) = _finish(procs)
    assert (code0, code1) == (PREEMPTED_EXIT, PREEMPTED_EXIT), err0[-2000:] + err1[-2000:]
    stopped = list_checkpoints(run)[-1][0]
    assert 3 <= stopped == _last_logged_step(run) < 30
    assert f"stopped by a stop signal to another process at step {stopped} of 30" in out0, out0[-2000:]
    assert "SIGTERM: stopping after this step with a checkpoint" in err1 and "Traceback" not in err0 + err1
    resumed = _finish(_start_pair(recipe, tmp_path, "resume=latest"))
    assert [code for code, _, _ in resumed] == [0, 0], resumed[0][2][-3000:]
    x, y = load_file(tmp_path / "straight" / "model.safetensors"), load_file(run / "model.safetensors")
    assert all(torch.equal(x[k], y[k]) for k in x), "resumed pair differs from the straight pair"
    faults("SIGTERM to one of two gloo processes, mid-run", f"nothing: both stopped at step {stopped}, checkpointed")


@pytest.mark.slow
def test_a_stop_signal_to_accelerate_launch_checkpoints_both_workers(tiny_shapes, tmp_path, faults):
    recipe, run = _pair_recipe(tiny_shapes, tmp_path, "run"), tmp_path / "run"
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    launcher = subprocess.Popen(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
         "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), "-m", "training.train",
         str(recipe)],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    _wait_for_steps(run, [launcher], steps=3)
    launcher.send_signal(signal.SIGTERM)
    [(code, out, err)] = _finish([launcher])
    stopped = list_checkpoints(run)[-1][0]
    assert 3 <= stopped == _last_logged_step(run) < 30, err[-3000:]
    assert f"at step {stopped} of 30" in out and err.count("stopping after this step with a checkpoint") == 2, err
    assert code != 0 and not (run / "results.json").exists()
    faults(
        "SIGTERM to `accelerate launch` (2 workers), mid-run", f"nothing: both stopped at step {stopped}, exit {code}"
    )


# The same five points, the signal now sent to `accelerate launch` (2 FSDP workers), which passes it on to both.
LAUNCHER_STOPS = [
    (point.replace("TERM2", "LAUNCHER2").replace("TERM", "LAUNCHER"), where) for point, where, _ in STOPS
]
SHARDED_FILES = ("state.json", "model.safetensors", "accelerator", "sharded")


def _launch_killer(recipe: Path, stop: str = "none:0") -> subprocess.CompletedProcess:
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    return subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
         "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
         str(Path(__file__).with_name("killer.py")), stop, str(recipe), "resume=latest"],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip


def _sharded_recipe(tiny_shapes, tmp_path, name: str):
    recipe = tiny_recipe(
        tiny_shapes, tmp_path / name, data={"num_workers": 1},
        train={"steps": STEPS, "checkpoint_every": 4, "eval_every": 6, "log_every": 1, "fsdp": True},
    )  # fmt: skip
    return write_recipe(tmp_path / f"{name}.yaml", recipe)


@pytest.mark.slow
def test_stop_signals_to_the_launcher_at_five_points_lose_at_most_the_step(tiny_shapes, tmp_path, faults):
    straight = _launch_killer(_sharded_recipe(tiny_shapes, tmp_path, "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    recipe, run = _sharded_recipe(tiny_shapes, tmp_path, "run"), tmp_path / "run"
    for stop, where in LAUNCHER_STOPS:
        before = list_checkpoints(run)[-1][0] if list_checkpoints(run) else 0
        proc = _launch_killer(recipe, stop)
        assert proc.returncode != 0 and not (run / "results.json").exists(), f"{stop}: {proc.stderr[-3000:]}"
        assert proc.stderr.count("SIGTERM: stopping after this step with a checkpoint") == 2, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr.split("ChildFailedError")[0], proc.stderr[-3000:]
        stopped = list_checkpoints(run)[-1][0]
        assert f"at step {stopped} of {STEPS}" in proc.stdout, proc.stdout[-2000:]
        assert stopped == _last_logged_step(run) and stopped >= before, stop  # nothing logged is lost
        for _, folder in list_checkpoints(run):
            assert all((folder / f).exists() for f in SHARDED_FILES), f"{stop}: {folder.name} incomplete"
        faults(where + " (to the launcher, 2 FSDP workers)", f"nothing: both workers checkpointed step {stopped}")
    proc = _launch_killer(recipe)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "results.json").read_text())["step"] == STEPS
    x, y = load_file(tmp_path / "straight" / "model.safetensors"), load_file(run / "model.safetensors")
    assert all(torch.equal(x[k], y[k]) for k in x), "the stopped and resumed run differs from the straight one"
