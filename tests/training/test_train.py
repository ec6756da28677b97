"""training.train end to end on tiny shapes: exact resume, clear config errors, bad shards, two processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from multimodal import load_checkpoint
from tests.conftest import REPO, fresh_accelerate, tiny_recipe, write_recipe
from training.checkpoint import list_checkpoints
from training.launch import free_port
from training.train import load_config, train

pytestmark = pytest.mark.usefixtures("clean_accelerate")  # each in-process run starts from a clean Accelerate


def _train(tmp_path: Path, recipe: dict, overrides: list[str] = ()) -> dict:
    path = write_recipe(tmp_path / f"recipe-{len(list(tmp_path.glob('recipe-*')))}.yaml", recipe)
    with fresh_accelerate():
        return train(load_config(path, list(overrides)))


def _cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )  # fmt: skip


@pytest.mark.parametrize("accum", [1, 2])
def test_resume_mid_run_gives_bitwise_identical_weights(tiny_shapes, tmp_path, accum):
    straight = tiny_recipe(tiny_shapes, tmp_path / "straight", optim={"accum": accum})
    _train(tmp_path, straight)
    interrupted = tiny_recipe(tiny_shapes, tmp_path / "resumed", optim={"accum": accum})
    first = _train(tmp_path, interrupted, ["train.stop_at=4"])
    assert first["step"] == 4
    assert [s for s, _ in list_checkpoints(tmp_path / "resumed")] == [4]
    second = _train(tmp_path, interrupted, ["resume=latest"])
    assert second["step"] == 8
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps.count(4) == 2  # train + eval record at 4, none duplicated by resuming
    state = json.loads((tmp_path / "resumed" / "checkpoints" / "step-00000008" / "state.json").read_text())
    assert state["batches"] == [8 * accum] and second["samples"] == 8 * accum * 16


@pytest.mark.slow  # three inductor compilations
def test_a_compiled_run_resumes_bitwise(tiny_shapes, tmp_path, capsys):
    compiled = {"compile": True}
    _train(tmp_path, tiny_recipe(tiny_shapes, tmp_path / "straight", train=compiled))
    assert "compiled" in capsys.readouterr().out
    interrupted = tiny_recipe(tiny_shapes, tmp_path / "resumed", train=compiled)
    assert _train(tmp_path, interrupted, ["train.stop_at=4"])["step"] == 4
    assert _train(tmp_path, interrupted, ["resume=latest"])["step"] == 8
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    _train(tmp_path, tiny_recipe(tiny_shapes, tmp_path / "eager"))
    eager = load_file(tmp_path / "eager" / "model.safetensors")
    assert eager.keys() == a.keys()  # compiled in place: the checkpoint is an eager model's, no "_orig_mod." keys
    # the same training up to the float rounding of fused kernels
    assert max((a[k].float() - eager[k].float()).abs().max().item() for k in a) < 1e-3


def test_ema_bf16_and_tensorboard(tiny_shapes, tmp_path):
    recipe = tiny_recipe(
        tiny_shapes, tmp_path / "run",
        train={"steps": 4, "ema_decay": 0.5, "precision": "bf16", "log_with": ["tensorboard"], "checkpoint_every": 0},
    )  # fmt: skip
    results = _train(tmp_path, recipe)
    assert 0.0 <= results["eval_ema/top1"] <= 1.0 and 0.0 <= results["eval/top1"] <= 1.0
    raw = load_file(tmp_path / "run" / "model.safetensors")
    ema = load_file(tmp_path / "run" / "model_ema.safetensors")
    assert raw.keys() == ema.keys() and not torch.equal(raw["head.weight"], ema["head.weight"])
    assert list((tmp_path / "run" / "logs").rglob("events.out.tfevents.*"))
    model = load_checkpoint(tmp_path / "run")  # EMA weights by default when the run kept them
    assert torch.equal(model.head.weight, ema["head.weight"])


def test_loss_falls_and_checkpoint_loads(tiny_shapes, tmp_path):
    train_ = {"steps": 120, "log_every": 10, "checkpoint_every": 60}
    recipe = tiny_recipe(tiny_shapes, tmp_path / "run", train=train_, data={"label": "color"})
    results = _train(tmp_path, recipe)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert losses[-1] < losses[0] - 0.5, losses
    assert results["eval/top1"] > 0.5  # 6 colours: chance is 1/6
    model = load_checkpoint(tmp_path / "run")
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["model"]["args"]["num_classes"] == 6 and cfg["data"]["label"] == "color"
    assert model.head.out_features == 6 and not model.training
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [60, 120]


def test_unknown_key_exits_nonzero_naming_the_nearest_and_writes_nothing(tiny_shapes, tmp_path):
    out = tmp_path / "never"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tiny_shapes, out))
    for override, key, nearest in [
        ("optim.lrr=0.1", "optim.lrr", "optim.lr"),
        ("model.args.deptth=3", "model.args.deptth", "model.args.depth"),
        ("train.step=5", "train.step", "train.steps"),
    ]:
        proc = _cli("-m", "training.train", str(recipe), override)
        assert proc.returncode == 2, proc.stderr
        assert f"'{key}'" in proc.stderr and f"did you mean '{nearest}'" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        assert not out.exists()
    bad = tiny_recipe(tiny_shapes, out)
    bad["optim"]["warmup_step"] = 3
    proc = _cli("-m", "training.train", str(write_recipe(tmp_path / "bad.yaml", bad)))
    assert proc.returncode == 2 and "did you mean 'optim.warmup_steps'" in proc.stderr
    proc = _cli("-m", "training.train", str(recipe), "train.steps=many")
    assert proc.returncode == 2 and "'train.steps' expects an integer, got 'many'" in proc.stderr
    assert not out.exists()


def test_existing_run_is_not_overwritten(tiny_shapes, tmp_path):
    recipe = tiny_recipe(tiny_shapes, tmp_path / "run", train={"steps": 2, "checkpoint_every": 0})
    _train(tmp_path, recipe)
    with pytest.raises(ValueError, match=r"already holds a run; continue it with resume=latest"):
        _train(tmp_path, recipe)


def test_overwrite_starts_afresh_without_the_old_runs_checkpoints(tiny_shapes, tmp_path, capsys):
    _train(tmp_path, tiny_recipe(tiny_shapes, tmp_path / "run", train={"steps": 8, "record_keys": True}))
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [4, 8]
    again = tiny_recipe(tiny_shapes, tmp_path / "run", train={"steps": 6, "stop_at": 2, "checkpoint_every": 2})
    _train(tmp_path, again, ["run.overwrite=true"])
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [2]  # not the old run's step 8
    assert not (tmp_path / "run" / "keys").exists()
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [
        2, 2
    ]  # fmt: skip
    capsys.readouterr()
    again["train"].pop("stop_at")
    assert _train(tmp_path, again, ["resume=latest"])["step"] == 6
    assert f"resumed from {tmp_path / 'run' / 'checkpoints' / 'step-00000002'} at step 2" in capsys.readouterr().out


def test_truncated_shard_run_finishes_and_reports_it(tiny_shapes, tmp_path):
    card = yaml.safe_load(tiny_shapes.read_text())
    data = tmp_path / "data"
    shutil.copytree(card["root"], data)
    card["root"] = str(data)
    bad = data / "train" / "000003.tar"
    bad.write_bytes(bad.read_bytes()[:30000])
    card_path = tmp_path / "card.yaml"
    card_path.write_text(yaml.safe_dump(card))
    recipe = tiny_recipe(card_path, tmp_path / "run", train={"steps": 30, "checkpoint_every": 0})
    results = _train(tmp_path, recipe)
    assert results["step"] == 30
    unreadable = results["data"]["unreadable_shards"]
    assert list(unreadable) == ["train/000003.tar"]
    assert "samples lost" in unreadable["train/000003.tar"]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["data"] == results["data"]


def test_two_processes_train_on_different_samples(tiny_shapes, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tiny_shapes, tmp_path / "run"))
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    proc = subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
         "-m", "training.train", str(recipe), "train.record_keys=true"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["num_processes"] == 2 and results["distributed_type"] == "MULTI_CPU"
    keys = [
        [line.split("\t")[1] for line in (tmp_path / "run" / "keys" / f"rank-{r}.txt").read_text().splitlines()]
        for r in range(2)
    ]
    assert len(keys[0]) == len(keys[1]) == 8 * 16
    assert not set(keys[0]) & set(keys[1])
    assert results["samples"] == 2 * 8 * 16


def test_image_folder_dataset_trains_and_evaluates(tmp_path):
    from PIL import Image

    root = tmp_path / "folder"
    for split, n in (("train", 24), ("test", 8)):
        for cls, colour in (("red_things", (220, 20, 20)), ("blue_things", (20, 20, 220))):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40, 30), colour).save(root / split / cls / f"{i}.png")
    recipe = tiny_recipe(root, tmp_path / "run", train={"steps": 20, "checkpoint_every": 0})
    recipe["data"].update(dataset=str(root), label=None, shuffle_buffer=0)
    results = _train(tmp_path, recipe)
    assert results["eval/num_samples"] == 16 and results["eval/num_classes_present"] == 2
    assert results["eval/top1"] == 1.0  # solid red vs solid blue
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["data"]["label"] == "label" and cfg["model"]["args"]["num_classes"] == 2


def test_ema_warmup_decay_and_its_checkpointed_count():
    from torch import nn

    from training.ema import ModelEma

    model = nn.Linear(2, 2)
    ema = ModelEma(model, 0.99)
    decays = []
    for _ in range(3):
        decays.append(ema.current_decay())
        ema.update(model)
    assert decays == [1 / 10, 2 / 11, 3 / 12]
    restored = ModelEma(model, 0.99)
    restored.load_state_dict(ema.state_dict())
    assert restored.num_updates == 3 and restored.current_decay() == 4 / 13
    assert ModelEma(model, 0.99, warmup=False).current_decay() == 0.99
    legacy = ModelEma(model, 0.99)
    legacy.load_state_dict(model.state_dict())  # a checkpoint from before the count was kept: no warmup left
    assert legacy.current_decay() == 0.99


def test_auto_threads_follow_the_load_and_a_resumed_run_keeps_its_count(tiny_shapes, tmp_path, monkeypatch, capsys):
    from multimodal import cli

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    recipe = tiny_recipe(tiny_shapes, tmp_path / "run")
    try:
        monkeypatch.setattr(cli, "busy_cores", lambda: 1.0)  # another job on one of the two cores
        _train(tmp_path, recipe, ["train.stop_at=4"])
        assert "1 of 2 cores busy with other work; computing with 1 thread(s)" in capsys.readouterr().err
        state = json.loads((tmp_path / "run" / "checkpoints" / "step-00000004" / "state.json").read_text())
        assert state["threads"] == 1
        monkeypatch.setattr(cli, "busy_cores", lambda: 0.0)  # the machine is free now: auto alone would take 2
        _train(tmp_path, recipe, ["resume=latest"])
        out = capsys.readouterr().out
        assert "resuming with the 1 thread(s) the run computed with" in out and "2 thread(s)" not in out
        assert torch.get_num_threads() == 1
        state = json.loads((tmp_path / "run" / "checkpoints" / "step-00000008" / "state.json").read_text())
        assert state["threads"] == 1
        with pytest.raises(Exception, match=r"train\.threads must be >= 1, or 0 for auto"):
            load_config(write_recipe(tmp_path / "bad.yaml", recipe), ["train.threads=-1"])
    finally:
        torch.set_num_threads(before)
