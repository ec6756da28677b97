"""SIGKILL a real training run at chosen and at random moments, resume it with ``resume=latest`` each time, and
compare the end with an uninterrupted run: bitwise identical weights and EMA, no partial checkpoint ever picked,
at most the steps since the last checkpoint recomputed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, run_cli, tiny_recipe, write_recipe
from training.checkpoint import find_latest, list_checkpoints
from training.metrics import record_step

STEPS, EVERY = 24, 4
KILLER = str(Path(__file__).with_name("killer.py"))
CHECKPOINT_FILES = (
    "state.json",
    "model.safetensors",
    "model_ema.safetensors",
    "accelerator/model.safetensors",
    "accelerator/optimizer.bin",
    "accelerator/random_states_0.pkl",
)


def _recipe(tiny_shapes: Path, tmp_path: Path, name: str, steps: int = STEPS, every: int = EVERY) -> Path:
    recipe = tiny_recipe(
        tiny_shapes, tmp_path / name,
        data={"num_workers": 0},
        train={"steps": steps, "checkpoint_every": every, "log_every": 1, "ema_decay": 0.9, "keep_checkpoints": 2},
    )  # fmt: skip
    return write_recipe(tmp_path / f"{name}.yaml", recipe)


def _run(recipe: Path, kill: str = "none:0", *extra: str) -> subprocess.CompletedProcess:
    return run_cli(KILLER, kill, str(recipe), "resume=latest", *extra, env={"PYTHONPATH": str(REPO)})


def _last_logged_step(run: Path) -> int:
    """The newest step in metrics.jsonl (a line cut short by the kill does not count)."""
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return max([0] + [s for s in map(record_step, lines) if s is not None])


def _check_after_kill(run: Path, every: int = EVERY) -> int:
    """Every ``step-*`` folder is complete; returns the step ``resume=latest`` will continue from."""
    root = run / "checkpoints"
    for folder in root.glob("step-*") if root.is_dir() else []:
        missing = [f for f in CHECKPOINT_FILES if not (folder / f).is_file()]
        assert not missing, f"{folder.name} is incomplete after a kill: {missing}"
    latest = find_latest(run)
    resume_step = list_checkpoints(run)[-1][0] if latest else 0
    reached = _last_logged_step(run)
    assert reached - resume_step <= every, f"killed at step {reached}, but resuming at {resume_step}"
    return resume_step


def _assert_same_weights(a: Path, b: Path) -> None:
    for name in ("model.safetensors", "model_ema.safetensors"):
        x, y = load_file(a / name), load_file(b / name)
        assert x.keys() == y.keys()
        different = [k for k in x if not torch.equal(x[k], y[k])]
        assert not different, (
            f"{name}: {len(different)} tensors differ from the uninterrupted run, e.g. {different[:3]}"
        )


def _resume_to_the_end(recipe: Path, run: Path, resume_step: int, steps: int = STEPS) -> None:
    proc = _run(recipe)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if resume_step:
        assert f"at step {resume_step}" in proc.stdout, proc.stdout
    results = json.loads((run / "results.json").read_text())
    assert results["step"] == steps


@pytest.fixture(scope="module")
def reference(tiny_shapes, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("uninterrupted")
    proc = _run(_recipe(tiny_shapes, tmp, "run"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run"


# Each kill lands in the run the previous kill left behind, so the points also meet each other's debris.
KILLS = ["weights:1", "save_state:2", "rename:1", "step:3", "remove:1", "copy:1", "metrics:5"]


POINTS = {
    "weights": "SIGKILL: checkpoint weights half written",
    "save_state": "SIGKILL: checkpoint optimizer/RNG written, weights not",
    "rename": "SIGKILL: checkpoint complete, before its rename",
    "step": "SIGKILL: mid-step, gradients computed",
    "remove": "SIGKILL: old checkpoint half deleted",
    "copy": "SIGKILL: run's model.safetensors half copied",
    "metrics": "SIGKILL: metrics.jsonl line half written",
}


def test_kills_at_every_checkpoint_stage_lose_nothing(reference, tiny_shapes, tmp_path, faults):
    recipe = _recipe(tiny_shapes, tmp_path, "run")
    run = tmp_path / "run"
    seen = []
    for kill in KILLS:
        proc = _run(recipe, kill)
        assert proc.returncode == -signal.SIGKILL, f"{kill}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
        assert not (run / "results.json").exists()
        seen.append((kill, _last_logged_step(run), _check_after_kill(run)))
    _resume_to_the_end(recipe, run, _check_after_kill(run))
    _assert_same_weights(reference, run)
    leftovers = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("."))
    assert leftovers == [], f"temporary folders left after the run finished: {leftovers}"
    assert [s for s, _ in list_checkpoints(run)] == [STEPS - EVERY, STEPS]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == list(range(1, STEPS + 1))
    assert [(k, reached, resumed) for k, reached, resumed in seen] == [
        ("weights:1", 4, 0), ("save_state:2", 8, 4), ("rename:1", 8, 4), ("step:3", 6, 4),
        ("remove:1", 12, 12), ("copy:1", 16, 16), ("metrics:5", 20, 20),
    ]  # fmt: skip
    for kill, reached, resumed in seen:
        faults(POINTS[kill.split(":")[0]], f"{reached - resumed} steps recomputed, final weights bitwise equal")


def _start(recipe: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, KILLER, "none:0", str(recipe), "resume=latest"], cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def _timed_reference(recipe: Path, run: Path) -> tuple[float, float]:
    """Run ``recipe`` uninterrupted; returns (seconds until its first step is logged, seconds in all)."""
    started = time.perf_counter()
    proc, first = _start(recipe), None
    while proc.poll() is None:
        if first is None and (run / "metrics.jsonl").exists():
            first = time.perf_counter() - started
        time.sleep(0.02)
    assert proc.returncode == 0
    return first or 0.0, time.perf_counter() - started


# A longer schedule than the staged kills', so that moments drawn at random fall inside training as well as in
# the start-up before it.
RANDOM_STEPS, RANDOM_EVERY = 120, 10


def _random_kills(tiny_shapes: Path, tmp_path: Path, kills: int, seed: int, faults) -> None:
    startup, total = _timed_reference(
        _recipe(tiny_shapes, tmp_path, "reference", RANDOM_STEPS, RANDOM_EVERY), tmp_path / "reference"
    )
    recipe = _recipe(tiny_shapes, tmp_path, "run", RANDOM_STEPS, RANDOM_EVERY)
    run, rng = tmp_path / "run", random.Random(seed)
    recomputed, resumed = [], 0
    for _ in range(kills):
        proc = _start(recipe)
        left = (total - startup) * (RANDOM_STEPS - resumed) / RANDOM_STEPS  # the training this run has to do
        time.sleep(rng.uniform(0.5 * startup, startup + left))  # from the middle of the start-up to the end
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        if proc.returncode != -signal.SIGKILL:  # it finished before the kill
            break
        reached, resumed = _last_logged_step(run), _check_after_kill(run, RANDOM_EVERY)
        recomputed.append(reached - resumed)
    _resume_to_the_end(recipe, run, _check_after_kill(run, RANDOM_EVERY), RANDOM_STEPS)
    _assert_same_weights(tmp_path / "reference", run)
    for n in recomputed:
        faults("SIGKILL: random moment", f"{n} steps recomputed, final weights bitwise equal")


def test_kills_at_random_moments_lose_nothing(tiny_shapes, tmp_path, faults):
    _random_kills(tiny_shapes, tmp_path, kills=3, seed=0, faults=faults)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_many_kills_at_random_moments_lose_nothing(tiny_shapes, tmp_path, seed, faults):
    _random_kills(tiny_shapes, tmp_path, kills=8, seed=seed, faults=faults)
