"""configs/vision: every recipe loads and builds its model; a recipe trains on a CIFAR-10-style image folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multimodal import create_model, load_checkpoint
from tests.conftest import REPO, fresh_accelerate
from training.train import load_config, train

RECIPES = sorted((REPO / "configs" / "vision").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads_and_its_model_has_about_0_7m_parameters(path: Path, tmp_path: Path):
    cfg = load_config(path, [f"run.out_dir={tmp_path / 'run'}"])
    classes = 36 if cfg.data.dataset == "shapes" else 10
    model = create_model(cfg.model.name, **{**cfg.model.args, "num_classes": classes})
    assert 0.6e6 < sum(p.numel() for p in model.parameters()) < 0.75e6


def _cifar_like_folder(root: Path) -> Path:
    """train/ and test/ with three class subfolders of 32 px PNGs, CIFAR-10's layout as image folders."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for name in ("airplane", "cat", "ship"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def test_aa_resnet_recipe_trains_on_an_image_folder(tmp_path: Path):
    folder = _cifar_like_folder(tmp_path / "cifar")
    run = tmp_path / "run"
    overrides = [
        f"data.dataset={folder}", "data.label=null", "data.batch_size=8", "data.eval_batch_size=8",
        "data.num_workers=0", "train.steps=3", "train.eval_every=0", "train.checkpoint_every=0",
        f"run.out_dir={run}", "train.progress=false", "train.log_with=[]",
    ]  # fmt: skip
    with fresh_accelerate():
        results = train(load_config(REPO / "configs" / "vision" / "aa_resnet18-shapes.yaml", overrides))
    assert results["step"] == 3 and results["eval/num_samples"] == 12
    assert load_checkpoint(run).fc.out_features == 3  # one logit per class folder
