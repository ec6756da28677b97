"""Shared fixtures: a tiny shapes dataset with its own card, a tiny training recipe, and no network."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from multimodal.data.shapes import ShapesSpec, write_shapes_card
from training.launch import free_port

REPO = Path(__file__).resolve().parents[1]

# train.threads=auto and the CLIs' --threads auto follow OMP_NUM_THREADS when it is set: pin it, so that runs inside
# the test process keep one thread count however busy the machine is (bitwise comparisons depend on it).
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
TINY_SPEC = ShapesSpec(seed=1, image_size=32, train=384, test=96, heldout=32, samples_per_shard=48)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if it tries to reach the network (e.g. to download weights)."""

    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small shapes dataset (8 train shards of 48) and a card for it; returns the card path."""
    return write_shapes_card(tmp_path_factory.mktemp("tiny-shapes"), TINY_SPEC, "tiny-shapes")


TINY_CLIP = {
    "name": "clip_nano",
    "args": {
        "embed_dim": 32,
        "vision": {"width": 32, "layers": 1, "heads": 2, "stem": "patch", "patch_size": 8},
        "text": {"width": 32, "layers": 1, "heads": 2, "context_length": 16},
    },
}  # a CLIP that trains on the tiny shapes in seconds


def tiny_recipe(card: Path, out_dir: Path, **sections: dict) -> dict:
    """A recipe that trains a 2-block ViT on the tiny shapes in seconds."""
    recipe = {
        "run": {"name": "tiny", "out_dir": str(out_dir), "seed": 0},
        "task": {"name": "classification"},
        "model": {
            "name": "vitc_nano_patch8_32",
            "args": {"dim": 32, "depth": 2, "heads": 2, "stem_width": 16, "drop_path_rate": 0.1},
        },
        "data": {
            "dataset": str(card),
            "label": "color_shape",
            "image_size": 32,
            "batch_size": 16,
            "eval_batch_size": 48,
            "num_workers": 1,
            "shuffle_buffer": 64,
        },
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "train": {"steps": 8, "log_every": 2, "checkpoint_every": 4, "log_with": [], "progress": False},
    }
    for name, values in sections.items():
        recipe[name] = {**recipe.get(name, {}), **values}
    return recipe


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


@contextlib.contextmanager
def fresh_accelerate() -> Iterator[None]:
    """Accelerate's process-wide singletons reset before and after: one run in this process, as if alone."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    try:
        yield
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


@pytest.fixture
def clean_accelerate() -> Iterator[None]:
    """The test runs from a clean Accelerate state (see :func:`fresh_accelerate`)."""
    with fresh_accelerate():
        yield


def train_recipe(tmp_path: Path, recipe: dict, overrides: list[str] = ()) -> dict:
    """Run ``recipe`` in this process (from a clean Accelerate state); returns its results."""
    from training.train import load_config, train

    path = write_recipe(tmp_path / f"recipe-{len(list(tmp_path.glob('recipe-*')))}.yaml", recipe)
    with fresh_accelerate():
        return train(load_config(path, list(overrides)))


def run_cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python ARGS`` from the repository root, one thread, output captured as text."""
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )  # fmt: skip


def launch(
    recipe: dict, tmp_path: Path, *overrides: str, processes: int = 2, module: str = "training.train",
    config: str | None = None,
):  # fmt: skip
    """``accelerate launch`` of ``processes`` gloo workers on ``recipe`` (one process: plain ``python -m``), with
    ``--multi_gpu`` or the launch ``config`` file; the finished process."""
    path = write_recipe(tmp_path / f"recipe-{len(list(tmp_path.glob('recipe-*')))}.yaml", recipe)
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    how = ["--config_file", config] if config else ["--multi_gpu"]
    command = [
        accelerate, "launch", *how, "--num_processes", str(processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
    ] if processes > 1 else [sys.executable]  # fmt: skip
    command += ["-m", module, str(path), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done
