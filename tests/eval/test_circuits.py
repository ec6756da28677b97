"""eval.circuits on tiny lm runs: the head table, compositions and ablations of a 2-layer model; the bigram match of
a 0-layer one; a run of another task refused in one line."""

from __future__ import annotations

import json

import pytest

from eval import circuits
from tests.training.test_gato_task import control_cards  # noqa: F401 (a fixture)
from tests.training.test_gato_task import recipe as gato_recipe
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
    assert "is a 'clip' run; eval.circuits reads runs of the lm and gato tasks" in capsys.readouterr().err


def test_a_gato_run_gets_where_its_action_tokens_look(tiny_shapes, control_cards, tmp_path, capsys) -> None:  # noqa: F811
    out = tmp_path / "gato"
    train(TrainConfig.from_dict(gato_recipe(tiny_shapes, control_cards, out, steps=4, checkpoint_every=0)))
    assert circuits.main(["--checkpoint", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "CartPole-v1: attention from window action tokens" in printed and "Pendulum-v1:" in printed
    saved = json.loads((out / "eval" / "circuits.json").read_text())["control"]
    for result in saved.values():
        assert len(result["heads"]) == 2 * 2 and result["queries"] > 0  # 2 layers x 2 heads
        regions = ("prompt", "own_timestep", "earlier_window")  # the rest of each row: the query itself
        for shares in (*result["heads"], result["uniform"]):
            assert 0 < sum(shares[r] for r in regions) < 1
            assert 0 < shares["prompt_actions"] < shares["prompt"]
