"""configs/unclip: every recipe loads and builds its model (on the meta device: no memory for the GPU-size ones);
resolving one needs its CLIP run (tests/training/test_unclip_tasks.py trains through that)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO
from training.config import TrainConfig

RECIPES = sorted((REPO / "configs" / "unclip").glob("*.yaml"))


def test_there_are_shapes_and_gpu_recipes_for_every_stage():
    names = {p.stem for p in RECIPES}
    for stage in ("prior", "decoder", "upsampler"):
        assert {f"shapes-{stage}", f"vit-b32-{stage}"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads(path: Path):
    cfg = TrainConfig.load(path)  # parses, type-checks and builds the model on the meta device
    assert cfg.task.name.startswith("unclip_")
    assert cfg.run.out_dir.endswith(cfg.task.name.removeprefix("unclip_"))
