"""Non-finite losses and gradients, injected at chosen steps: the step is skipped with a warning, and after
``train.max_bad_steps`` in a row the run stops, naming the step, with the last good checkpoint intact."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli, tiny_recipe, train_recipe, write_recipe
from training.checkpoint import list_checkpoints
from training.tasks.classification import ClassificationTask
from training.train import TrainingError


class _InfGradient(torch.autograd.Function):
    """The identity, whose backward pass returns an infinite gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.inf


def _poison(monkeypatch: pytest.MonkeyPatch, bad: dict[int, str]) -> None:
    """Make the loss of step n (1-based, one micro-batch a step) NaN ("loss") or its gradient infinite ("grad")."""
    loss = ClassificationTask.loss
    calls = itertools.count(1)

    def poisoned(self, model, batch):
        value, logs = loss(self, model, batch)
        kind = bad.get(next(calls))
        if kind == "loss":
            value = value * math.nan
        elif kind == "grad":
            value = _InfGradient.apply(value)
        return value, {**logs, "loss": value.detach()}

    monkeypatch.setattr(ClassificationTask, "loss", poisoned)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.*")}


def test_bad_steps_are_skipped_with_a_warning(tiny_shapes, tmp_path, monkeypatch, capsys, faults):
    _poison(monkeypatch, {3: "loss", 5: "grad", 6: "loss"})
    recipe = tiny_recipe(tiny_shapes, tmp_path / "run", train={"steps": 8, "log_every": 1, "ema_decay": 0.9})
    results = train_recipe(tmp_path, recipe)
    assert results["step"] == 8 and results["skipped_steps"] == 3
    err = capsys.readouterr().err
    assert "warning: step 3: non-finite loss, update skipped (1 in a row; the run stops at 5)" in err
    assert "warning: step 5: non-finite gradient, update skipped (1 in a row; the run stops at 5)" in err
    assert "warning: step 6: non-finite loss, update skipped (2 in a row; the run stops at 5)" in err
    for name in ("model.safetensors", "model_ema.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "run" / name).values())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "train/loss" in r or "train/skipped_steps" in r]
    assert {r["step"]: r.get("train/skipped_steps", 0) for r in train_records} == {
        1: 0, 2: 0, 3: 1, 4: 0, 5: 1, 6: 1, 7: 0, 8: 0
    }  # fmt: skip
    assert all(math.isfinite(r["train/loss"]) for r in train_records if "train/loss" in r)
    saved = json.loads((tmp_path / "run" / "checkpoints" / "step-00000008" / "state.json").read_text())
    assert saved["skipped_steps"] == 3 and saved["bad_streak"] == 0
    for _ in range(3):
        faults("NaN loss / inf gradient (isolated)", "that step's update (skipped, weights finite)")


def test_a_skipped_step_leaves_the_weights_untouched(tiny_shapes, tmp_path, monkeypatch):
    """Stopping at step 2 with step 2 bad gives the weights of step 1."""
    recipe = tiny_recipe(tiny_shapes, tmp_path / "a", train={"steps": 8, "stop_at": 1, "checkpoint_every": 0})
    train_recipe(tmp_path, recipe)
    _poison(monkeypatch, {2: "grad"})
    recipe = tiny_recipe(tiny_shapes, tmp_path / "b", train={"steps": 8, "stop_at": 2, "checkpoint_every": 0})
    assert train_recipe(tmp_path, recipe)["skipped_steps"] == 1
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_too_many_bad_steps_in_a_row_stop_the_run(tiny_shapes, tmp_path, monkeypatch, faults):
    _poison(monkeypatch, {n: "loss" for n in range(6, 100)})
    recipe = tiny_recipe(tiny_shapes, tmp_path / "run", train={"steps": 20, "max_bad_steps": 3})
    good: dict[str, str] = {}
    save = __import__("training.checkpoint", fromlist=["save_checkpoint"]).save_checkpoint

    def save_and_remember(acc, run_dir, **kwargs):
        final = save(acc, run_dir, **kwargs)
        good.update(_digest(final))
        return final

    monkeypatch.setattr("training.trainer.save_checkpoint", save_and_remember)
    with pytest.raises(TrainingError) as stop:
        train_recipe(tmp_path, recipe)
    message = str(stop.value)
    assert message.startswith("stopped at step 8: 3 steps in a row (6-8) had a non-finite loss or gradient")
    assert str(tmp_path / "run" / "checkpoints" / "step-00000004") in message and "resume=latest" in message
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [4]
    assert _digest(tmp_path / "run" / "checkpoints" / "step-00000004") == good
    assert not (tmp_path / "run" / "results.json").exists()
    faults("NaN loss from step 6 on (stop after 3)", "run stopped at step 8; checkpoint step 4 byte-identical")


def test_a_diverging_run_stops_with_a_one_line_error(tiny_shapes, tmp_path, faults):
    """An absurd learning rate, no injection: the loss overflows and the CLI says so in one line."""
    recipe = tiny_recipe(
        tiny_shapes, tmp_path / "run",
        optim={"lr": 1e30, "warmup_steps": 0, "grad_clip": None}, train={"steps": 40, "checkpoint_every": 1},
    )  # fmt: skip
    proc = run_cli("-m", "training.train", str(write_recipe(tmp_path / "r.yaml", recipe)))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "5 steps in a row" in errors[0] and "non-finite loss" in errors[0], proc.stderr
    stopped = int(errors[0].split("stopped at step ")[1].split(":")[0])
    last_good = list_checkpoints(tmp_path / "run")[-1][0]
    assert last_good == stopped - 5 and f"step-{last_good:08d}" in errors[0]
    assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "run" / "model.safetensors").values())
    faults("divergence (lr 1e30)", f"stopped at step {stopped}, last good checkpoint step {last_good} kept")
