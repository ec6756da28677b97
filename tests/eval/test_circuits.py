"""eval.circuits on tiny lm runs: the head table, compositions and ablations of a 2-layer model; the bigram match of
a 0-layer one; a run of another task refused in one line."""

from __future__ import annotations

import json

import pytest

from eval import circuits
from tests.training.test_lm_task import recipe
from training.config import TrainConfig
from training.train import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("circuits")
    for depth in (0, 2):
        cfg = recipe(root / f"attn{depth}", steps=60, eval_every=0)
        cfg["model"]["args"]["depth"] = depth
        train(TrainConfig.from_dict(cfg))
    return root


def test_a_two_layer_run_gets_its_head_table_compositions_ablations_and_pictures(runs, capsys) -> None:
    assert circuits.main(["--checkpoint", str(runs / "attn2"), "--period", "5"]) == 0
    printed = capsys.readouterr().out
    assert "layer head prev-token duplicate induction" in printed and "chance" in printed
    saved = json.loads((runs / "attn2" / "eval" / "circuits.json").read_text())
    assert len(saved["heads"]) == 4 and set(saved["composition"]) == {"q", "k", "v"}
    assert len(saved["composition"]["k"]) == 4  # 2 heads of layer 0 x 2 heads of layer 1
    assert 0 < saved["composition_baseline"]["mean"] < saved["composition_baseline"]["p99"] < 1
    best = saved["ablation"][0]
    assert len(best["heads"]) == 1 and set(best["repeat_loss"]) == {"zero", "mean"}
    assert (runs / "attn2" / "eval" / "circuits-patterns.png").stat().st_size > 0
    assert (runs / "attn2" / "eval" / "circuits-scores.png").stat().st_size > 0


def test_a_zero_layer_run_gets_its_bigram_match(runs, capsys) -> None:
    assert circuits.main(["--checkpoint", str(runs / "attn0")]) == 0
    assert "direct path vs log-bigrams: correlation" in capsys.readouterr().out
    saved = json.loads((runs / "attn0" / "eval" / "circuits.json").read_text())
    assert -1 <= saved["bigram"]["correlation"] <= 1 and saved["bigram"]["pairs"] > 0


def test_a_run_of_another_task_is_refused(tmp_path, capsys) -> None:
    (tmp_path / "config.yaml").write_text("task: {name: clip}\nmodel: {name: clip_nano}\n")
    assert circuits.main(["--checkpoint", str(tmp_path)]) != 0
    assert "is a 'clip' run; eval.circuits reads runs of the lm task" in capsys.readouterr().err
