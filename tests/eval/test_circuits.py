"""eval.circuits on tiny lm runs: the head table, compositions and ablations of a 2-layer model; the bigram match of
a 0-layer one; a run of another task refused in one line."""

from __future__ import annotations

import json

import pytest

from eval import circuits
from tests.conftest import tiny_recipe, train_recipe
from tests.training.test_clip_task import clip_recipe
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
    best, _, partner = saved["ablation"]
    assert best["what"] == "best induction head" and len(best["heads"]) == 1
    assert set(best["repeat_loss"]) == {"zero", "mean"}
    assert partner["what"] == "its K-composition partner" and partner["heads"] == [saved["k_partner"]["from"]]
    assert saved["k_partner"]["to"] == best["heads"][0] and saved["k_partner"]["from"][0] == 0
    assert (runs / "attn2" / "eval" / "circuits-patterns.png").stat().st_size > 0
    assert (runs / "attn2" / "eval" / "circuits-scores.png").stat().st_size > 0


@pytest.mark.transformer_lens
def test_transformer_lens_agrees_on_the_trained_weights(runs, capsys) -> None:
    pytest.importorskip("transformer_lens")
    assert circuits.main(["--checkpoint", str(runs / "attn2"), "--period", "5", "--transformer-lens"]) == 0
    assert "TransformerLens on the same weights, largest absolute difference: logits" in capsys.readouterr().out
    agreement = json.loads((runs / "attn2" / "eval" / "circuits.json").read_text())["transformer_lens"]
    assert set(agreement) >= {"logits", "patterns", "induction", "previous_token", "k_composition"}
    assert max(agreement.values()) <= 1e-4


def test_a_zero_layer_run_gets_its_bigram_match(runs, capsys) -> None:
    assert circuits.main(["--checkpoint", str(runs / "attn0")]) == 0
    assert "direct path vs log-bigrams: correlation" in capsys.readouterr().out
    saved = json.loads((runs / "attn0" / "eval" / "circuits.json").read_text())
    assert -1 <= saved["bigram"]["correlation"] <= 1 and saved["bigram"]["pairs"] > 0


def test_a_run_of_another_task_is_refused(tmp_path, capsys) -> None:
    (tmp_path / "config.yaml").write_text("task: {name: unclip_prior}\nmodel: {name: prior_nano}\n")
    assert circuits.main(["--checkpoint", str(tmp_path)]) != 0
    assert "is a 'unclip_prior' run; eval.circuits reads runs of the lm, gato, clip and" in capsys.readouterr().err


def test_a_clip_run_gets_both_towers_tables_compositions_and_pictures(tiny_shapes, tmp_path, capsys) -> None:
    recipe = clip_recipe(tiny_shapes, tmp_path / "clip")
    for tower in ("vision", "text"):
        recipe["model"]["args"][tower]["layers"] = 2
    train_recipe(tmp_path, recipe)
    assert circuits.main(["--checkpoint", str(tmp_path / "clip"), "--images", "16"]) == 0
    printed = capsys.readouterr().out
    assert "CLIP text tower on 16 captions" in printed and "CLIP image tower on 16 images (4x4 patches" in printed
    saved = json.loads((tmp_path / "clip" / "eval" / "circuits.json").read_text())
    text, vision = saved["text"], saved["vision"]
    assert len(text["heads"]) == len(vision["heads"]) == 2 * 2  # 2 layers x 2 heads
    for head in text["heads"]:
        assert 0 <= head["eot_to_sot"] + head["eot_to_itself"] <= 1 + 1e-5
        assert 0 < sum(share for _, share in head["eot_top_words"]) <= 1 - head["eot_to_sot"] + 1e-5
        assert all(0 <= head[k] <= 1 for k in ("previous_token", "duplicate_token", "induction"))
    uniform = sum(1 / (i + 1) for i in range(8, 15)) / 7  # queries 8..14 of [sot] w w (w: 7 ids) see i + 1 keys
    assert text["period"] == 7 and text["chance"]["induction"] == pytest.approx(uniform)
    for head in vision["heads"]:  # 16 patches on a 4x4 grid: distances between 0 and sqrt(18)
        assert 0 <= head["patch_mean_distance"] <= 18**0.5 and 0 <= head["patch_to_cls"] + head["patch_to_itself"] <= 1
    assert vision["chance"]["cls_to_cls"] == pytest.approx(1 / 17)
    assert len(text["composition"]["k"]) == len(vision["composition"]["k"]) == 4
    for picture in ("circuits-text-patterns.png", "circuits-cls-maps.png"):
        assert (tmp_path / "clip" / "eval" / picture).stat().st_size > 0


def test_a_vit_run_gets_its_head_table(tiny_shapes, tmp_path, capsys) -> None:
    train_recipe(tmp_path, tiny_recipe(tiny_shapes, tmp_path / "vit"))
    assert circuits.main(["--checkpoint", str(tmp_path / "vit"), "--images", "8"]) == 0
    assert "ViT on 8 images (4x4 patches and a class token)" in capsys.readouterr().out
    saved = json.loads((tmp_path / "vit" / "eval" / "circuits.json").read_text())["vision"]
    assert len(saved["heads"]) == 2 * 2 and saved["composition"]["q"][0]["score"] > 0


def test_a_gato_run_gets_where_its_action_tokens_look(tiny_shapes, control_cards, tmp_path, capsys) -> None:  # noqa: F811
    out = tmp_path / "gato"
    train(TrainConfig.from_dict(gato_recipe(tiny_shapes, control_cards, out, steps=4, checkpoint_every=0)))
    assert circuits.main(["--checkpoint", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "CartPole-v1: attention from window action tokens" in printed and "Pendulum-v1:" in printed
    everything = json.loads((out / "eval" / "circuits.json").read_text())
    assert len(everything["composition"]["k"]) == 2 * 2 and "composition, top 3 of each" in printed
    assert (out / "eval" / "circuits-CartPole-v1.png").stat().st_size > 0
    saved = everything["control"]
    assert "the demonstration's actions shuffled among its timesteps" in printed
    for result in saved.values():
        use = result["use"]
        assert 0 < use["moved"] <= 1 and use["ablated"] and 0 <= use["as_is"]["accuracy"] <= 1
        assert use["as_is"]["loss"] > 0 and use["prompt_actions_shuffled"]["loss"] > 0
        repeated = result["repeated"]
        assert len(repeated["heads"]) == 2 * 2 and repeated["period"] == repeated["timesteps"] * (
            6 if result["env"] == "CartPole-v1" else 5
        )  # CartPole: 4 observation values, '|', 1 action; Pendulum: 3, '|', 1
        assert all(0 <= h["induction"] <= 1 for h in repeated["heads"])
    for result in saved.values():
        assert len(result["heads"]) == 2 * 2 and result["queries"] > 0  # 2 layers x 2 heads
        regions = ("prompt", "own_timestep", "earlier_window")  # the rest of each row: the query itself
        for shares in (*result["heads"], result["uniform"]):
            assert 0 < sum(shares[r] for r in regions) < 1
            assert 0 < shares["prompt_actions"] < shares["prompt"]
