"""eval.classify: the CLI reproduces the trainer's final evaluation and reports bad input clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, fresh_accelerate, tiny_recipe, write_recipe
from training.train import load_config, train


@pytest.fixture(scope="module")
def tiny_run(tiny_shapes, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("classify")
    recipe = tiny_recipe(tiny_shapes, tmp / "run", train={"steps": 6, "checkpoint_every": 0})
    with fresh_accelerate():
        results = train(load_config(write_recipe(tmp / "r.yaml", recipe), []))
    return tmp / "run", results


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "eval.classify", *args], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def test_cli_matches_the_trainers_evaluation(tiny_run, tiny_shapes, tmp_path):
    run, results = tiny_run
    out = tmp_path / "m.json"
    proc = _cli("--checkpoint", str(run), "--dataset", str(tiny_shapes), "--out", str(out), "--workers", "0")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(out.read_text())
    assert metrics["top1"] == pytest.approx(results["eval/top1"])
    assert metrics["top5"] == pytest.approx(results["eval/top5"])
    assert metrics["num_samples"] == 96
    assert "top1" in proc.stdout and "mean_per_class_recall" in proc.stdout


def test_cli_errors_are_one_line(tiny_run, tiny_shapes, tmp_path):
    run, _ = tiny_run
    proc = _cli("--checkpoint", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    proc = _cli("--checkpoint", str(tmp_path))
    assert proc.returncode == 2 and "not a run directory" in proc.stderr
    proc = _cli("--checkpoint", str(run), "--dataset", str(tiny_shapes), "--label", "color")
    assert proc.returncode == 2 and "predicts 36 classes but tiny-shapes:color has 6" in proc.stderr
    proc = _cli("--checkpoint", str(run), "--dataset", "shapez")
    assert proc.returncode == 2 and "did you mean 'shapes'" in proc.stderr
