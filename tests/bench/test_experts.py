"""bench/experts.py end to end on a tiny two-task mixture: equal training sequences per task in every system, BTM
branches from the seed run, and the comparison of everything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bench.experts import main
from tests.training.test_gato_task import recipe, tiny_control_card


@pytest.mark.slow
def test_every_system_trains_at_equal_sequences_and_is_compared(tiny_shapes: Path, tmp_path: Path) -> None:
    cards = {"tiny-cartpole": tiny_control_card(tmp_path, "CartPole-v1", "tiny-cartpole")}
    cfg = recipe(tiny_shapes, cards, tmp_path / "unused", steps=6)
    cfg["task"]["mixture"] = {str(tiny_shapes): 0.75, str(cards["tiny-cartpole"]): 0.25}
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "experts"
    argv = ["--config", str(config), "--steps", "6", "--out-dir", str(out), "--episodes", "1", "--samples", "4"]
    assert main([*argv, "--systems", "dense,btm,single"]) == 0
    trained = [p for p in out.iterdir() if (p / "results.json").is_file()]
    steps = {p.name: json.loads((p / "results.json").read_text())["step"] for p in trained}
    # shares 0.75 and 0.25 of 6 steps: the seed takes 2, the branches and the singles those shares of the rest
    assert steps == {"dense": 6, "btm-seed": 2, "btm-captions": 3, "btm-state": 1, "single-tiny-shapes": 4,
                     "single-tiny-cartpole": 2}  # fmt: skip
    assert (out / "btm-average" / "model.safetensors").is_file()
    branch = yaml.safe_load((out / "btm-state" / "config.yaml").read_text())
    assert branch["model"]["init_from"] == str(out / "btm-seed") and list(branch["task"]["mixture"]) == [
        str(cards["tiny-cartpole"])
    ]
    systems = json.loads((out / "experts.json").read_text())["systems"]
    assert set(systems) == {"dense", "btm-ensemble", "btm-average", "single-task"}
    assert set(systems["single-task"]["scores"]) == {"tiny-shapes", "tiny-shapes (heldout)", "tiny-cartpole"}
    assert main([*argv, "--systems", "dense"]) == 0  # finished runs are reused, not retrained
