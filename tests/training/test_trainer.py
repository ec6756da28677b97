"""training.trainer: one CLIP run builds its config, task and model once per process; the loop's small objects."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from multimodal.models.clip import CLIP
from tests.conftest import TINY_CLIP, fresh_accelerate, tiny_recipe, write_recipe
from training import resume as resume_module
from training.config import TrainConfig
from training.guard import PeerLostError
from training.metrics import RunningMeans, format_eval, record_step
from training.tasks.base import Task
from training.train import main


def test_a_clip_run_builds_config_task_and_model_once(tiny_shapes, tmp_path, monkeypatch):
    built = {"config": 0, "task": 0, "model": 0, "resume decision": 0}

    def counting(key, fn):
        def wrapper(*args, **kwargs):
            built[key] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(TrainConfig, "load", classmethod(counting("config", TrainConfig.load.__func__)))
    monkeypatch.setattr(Task, "__init__", counting("task", Task.__init__))
    monkeypatch.setattr(CLIP, "__init__", counting("model", CLIP.__init__))  # every CLIP, on any device
    monkeypatch.setattr(
        "training.trainer.resume_checkpoint", counting("resume decision", resume_module.resume_checkpoint)
    )
    recipe = tiny_recipe(tiny_shapes, tmp_path / "run", train={"steps": 2, "checkpoint_every": 0})
    recipe["task"] = {"name": "clip", "zeroshot_splits": ["test"]}
    recipe["model"] = copy.deepcopy(TINY_CLIP)
    with fresh_accelerate():
        assert main([str(write_recipe(tmp_path / "clip.yaml", recipe))]) == 0
    assert built == {"config": 1, "task": 1, "model": 1, "resume decision": 1}
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["step"] == 2 and 0.0 <= results["eval/test_top1"] <= 1.0


def test_running_means_average_micro_batches_and_start_a_new_window():
    class One:  # a single process: Accelerate's reduce is never called
        num_processes, device = 1, torch.device("cpu")

    window = RunningMeans()
    window.add([{"loss": 1.0, "acc": 0.5}, {"loss": 3.0, "acc": 1.0}])
    window.add([{"loss": 2.0, "acc": 0.0}])
    window.samples, window.skipped_steps = 48, 1
    means, samples = window.means(One(), lr=0.1)
    assert samples == 48 and means["train/loss"] == pytest.approx(2.0) and means["train/acc"] == pytest.approx(0.5)
    assert means["train/lr"] == 0.1 and means["train/skipped_steps"] == 1 and means["train/samples_per_s"] > 0
    assert list(means)[:3] == ["train/acc", "train/loss", "train/lr"]  # the order metrics.jsonl keeps
    assert (window.sums, window.count, window.samples, window.skipped_steps) == ({}, 0, 0, 0)


def test_lost_peers_are_told_apart_from_other_errors():
    assert PeerLostError.caused(RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer [::1]"))
    assert PeerLostError.caused(RuntimeError("NCCL communicator was aborted on rank 1"))
    assert not PeerLostError.caused(RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"))


def test_metrics_lines_and_evaluation_summaries():
    assert record_step('{"step": 12, "train/loss": 0.5}') == 12
    assert record_step('{"step": 12, "train/lo') is None  # a line a crash cut short
    line = format_eval(40, {"eval/top1": 0.5, "eval_ema/top1": 0.75, "eval/skipped_samples": 2}, "test")
    assert line == "eval on the held-out 'test' split @ step 40: top1 0.5000, ema top1 0.7500, skipped_samples 2"
    assert format_eval(40, {"eval/test_top1": 0.5}, "test") == "eval @ step 40: test_top1 0.5000"
