"""bench/clip_batch.py: the schedule rule, the table, and (slow) a whole tiny sweep."""

from __future__ import annotations

import json
import math

import pytest
from PIL import Image

from bench.clip_batch import main, overrides, plan, table
from tests.conftest import write_recipe
from tests.training.test_clip_task import clip_recipe

BASE = dict(base_batch=128, base_lr=1e-3, warmup_fraction=100 / 3800, chunk=256)


def test_equal_samples_square_root_learning_rate_and_chunks_past_the_largest_batch_at_once():
    small, large = plan(32, 153_600, **BASE), plan(2048, 153_600, **BASE)
    assert (small["steps"], small["chunks"], small["warmup"]) == (4800, 1, 126)
    assert (large["steps"], large["chunks"], large["warmup"]) == (75, 8, 2)
    assert small["lr"] == pytest.approx(5e-4) and large["lr"] == pytest.approx(4e-3)
    assert plan(128, 153_600, **BASE)["lr"] == 1e-3
    assert "task.grad_cache_chunks=8" in overrides(large, 3) and "run.seed=3" in overrides(large, 3)
    with pytest.raises(SystemExit, match="not a multiple of batch 96"):
        plan(96, 1000, **BASE)


def test_the_table_gives_mean_and_spread_over_seeds():
    p = plan(128, 1280, **BASE)
    runs = [{"plan": p, "evals": [{"step": 10, "seconds": 60.0 * (1 + s), "test": t, "heldout": 0.5}]}
            for s, t in enumerate((0.8, 0.9))]  # fmt: skip
    row = table({128: runs}, [0, 1]).splitlines()[-1]
    assert row == "| 128 | 1.00e-03 | 10 | 0.8500 +- 0.0707 | 0.5000 +- 0.0000 | 1.5 | 0.8000, 0.9000 |"


@pytest.mark.slow
def test_a_tiny_sweep_trains_every_batch_and_draws_both_plots(tiny_shapes, tmp_path):
    recipe = clip_recipe(tiny_shapes, tmp_path / "unused", train={"steps": 8}, data={"num_workers": 0})
    config = write_recipe(tmp_path / "clip.yaml", recipe)
    plot = tmp_path / "batch.png"
    argv = ["--config", str(config), "--batches", "8,16,32", "--samples", "64", "--seeds", "0", "--chunk", "16"]
    assert main([*argv, "--out-dir", str(tmp_path / "runs"), "--plot", str(plot)]) == 0
    record = json.loads((tmp_path / "runs" / "clip-batch.json").read_text())
    for batch, steps in (("8", 8), ("16", 4), ("32", 2)):
        (run,) = record["results"][batch]
        assert run["plan"]["steps"] == steps and run["evals"][-1]["step"] == steps
        assert 0 <= run["evals"][-1]["heldout"] <= 1 and math.isfinite(run["evals"][-1]["seconds"])
    assert record["results"]["32"][0]["plan"]["chunks"] == 2
    assert Image.open(plot).size == Image.open(tmp_path / "batch-time.png").size == (720, 440)
