"""training.checkpoint: only complete checkpoints count; weights are written atomically."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from multimodal.io import atomic_write_text
from training.checkpoint import find_latest, list_checkpoints, save_weights


def test_partial_and_temporary_checkpoints_are_ignored(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("step-00000010", "step-00000030", ".tmp-step-00000040", "step-00000050", "junk"):
        (root / name).mkdir(parents=True)
    for name in ("step-00000010", "step-00000030"):
        (root / name / "state.json").write_text("{}")
    assert [s for s, _ in list_checkpoints(tmp_path)] == [10, 30]  # step 50 lacks state.json
    assert find_latest(tmp_path).name == "step-00000030"
    assert find_latest(tmp_path / "elsewhere") is None


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    atomic_write_text(tmp_path / "a.json", "{}")
    model = torch.nn.Linear(3, 2)
    save_weights(model, tmp_path / "model.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "model.safetensors"]
    state = load_file(tmp_path / "model.safetensors")
    assert torch.equal(state["weight"], model.weight.detach())
