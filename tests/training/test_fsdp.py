"""FSDP2 (``train.fsdp=true``) on two gloo processes: one sharding policy for every family, the same loss curve as
DDP on the same global batch, sharded checkpoints that resume exactly at the same world size and load whole at
another, and one-line refusals of what it cannot do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from multimodal import create_model
from tests.conftest import REPO, TINY_CLIP, launch, run_cli, tiny_recipe, train_recipe, write_recipe
from tests.training.test_clip_task import clip_recipe
from tests.training.test_gato_task import control_cards  # noqa: F401 (a fixture)
from tests.training.test_gato_task import recipe as gato_recipe
from tests.training.test_unclip_tasks import decoder_recipe, prior_recipe
from training.config import TrainConfig
from training.launch import LaunchError, make_accelerator
from training.sharding import shard_units

STEPS = 20


def losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in records if "train/loss" in r]


# --- the policy ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        ("vitc_nano_patch8_32", {"dim": 32, "depth": 2, "heads": 2}, ["blocks.0", "blocks.1"]),
        ("unclip_prior_nano", {"width": 32, "depth": 2, "heads": 2}, ["blocks.0", "blocks.1"]),
    ],
)
def test_each_transformer_block_is_a_unit(name, args, expected):
    model = create_model(name, **args)
    assert [n.rsplit(".", 2)[-2] + "." + n.rsplit(".", 1)[-1] for n in shard_units(model)] == expected


def test_clip_shards_both_towers_and_keeps_logit_scale_in_the_root():
    model = create_model("clip_nano", **TINY_CLIP["args"])
    units = shard_units(model)
    assert any(u.startswith("visual.") for u in units) and any(u.startswith("text.") for u in units)
    assert not any("logit_scale".startswith(u) for u in units)


def test_gato_keeps_its_tied_embedding_in_the_root_and_shards_blocks_and_patch_blocks():
    model = create_model("gato_nano", dim=32, depth=2, heads=2, patch_channels=8, patch_groups=4)
    units = shard_units(model)
    # The output projection is token_embed's weight (Gato.logits): it must stay in the root unit, with the embedding.
    assert not any("token_embed".startswith(u) for u in units)
    kinds = {type(dict(model.named_modules())[u]).__name__ for u in units}
    assert {"Block", "PatchResNetBlock"} <= kinds


def test_a_unet_shards_its_down_mid_and_up_blocks():
    model = create_model("unclip_decoder_nano", image_size=16, block_out_channels=[16, 32], attention=[False, True])
    units = shard_units(model)
    assert {"unet.down_blocks.0", "unet.down_blocks.1", "unet.mid_block", "unet.up_blocks.0"} <= set(units)
    depth = {u: u.count(".") for u in units}
    assert list(depth.values()) == sorted(depth.values(), reverse=True)  # inner units first


# --- the same loss curve as DDP ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip_run(tiny_shapes, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fsdp-clip")
    train_recipe(root, clip_recipe(tiny_shapes, root / "clip", train={"steps": 4, "checkpoint_every": 0}))
    return root


def _family_recipe(family: str, card: Path, out: Path, clip_root: Path, cards: dict) -> dict:
    if family == "vit":
        recipe = tiny_recipe(card, out)
    elif family == "clip":
        recipe = clip_recipe(card, out)
    elif family == "prior":
        recipe = prior_recipe(card, clip_root, steps=STEPS, out=str(out.relative_to(clip_root)))
    elif family == "decoder":
        recipe = decoder_recipe(card, clip_root)
        recipe["run"]["out_dir"] = str(out)
    else:
        recipe = gato_recipe(card, cards, out)
    recipe["train"].update(steps=STEPS, log_every=1, checkpoint_every=0, ema_decay=0.0)
    recipe["data"].update(eval_split=None, num_workers=0)
    return recipe


@pytest.mark.slow
@pytest.mark.parametrize("family", ["vit", "clip", "prior", "decoder", "gato"])
def test_fsdp_gives_the_loss_curve_of_ddp(family, tiny_shapes, tiny_clip_run, control_cards, tmp_path):  # noqa: F811
    curves = {}
    for fsdp in (False, True):
        out = tiny_clip_run / f"{family}-{tmp_path.name}-{'fsdp' if fsdp else 'ddp'}"
        recipe = _family_recipe(family, tiny_shapes, out, tiny_clip_run, control_cards)
        done = launch(recipe, tmp_path, f"train.fsdp={str(fsdp).lower()}")
        assert ("FSDP2" in done.stdout) == fsdp
        curves[fsdp] = losses(out)
    ddp, fsdp = (torch.tensor(curves[k], dtype=torch.float64) for k in (False, True))
    assert len(ddp) == len(fsdp) == STEPS
    relative = ((fsdp - ddp).abs() / ddp.abs()).max().item()
    print(f"{family}: FSDP vs DDP over {STEPS} steps, largest relative loss difference {relative:.2e}")  # README
    assert relative <= 1e-4, (family, relative, curves)
    assert ddp[-5:].mean() < ddp[:5].mean()  # it trains: the curve compared is not flat


# --- sharded checkpoints ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded_run(tiny_shapes, tmp_path_factory) -> Path:
    """Six FSDP steps on two processes, checkpointed at 3 and 6."""
    root = tmp_path_factory.mktemp("fsdp-run")
    recipe = tiny_recipe(tiny_shapes, root / "run", train={"steps": 6, "checkpoint_every": 3, "fsdp": True})
    recipe["data"]["num_workers"] = 0
    launch(recipe, root)
    (root / "recipe.yaml").write_text(json.dumps(recipe))
    return root


def test_a_sharded_checkpoint_holds_each_ranks_slices_and_the_whole_weights(sharded_run):
    step = sharded_run / "run" / "checkpoints" / "step-00000003"
    assert len(list((step / "sharded").glob("*.safetensors"))) == 2
    assert not list(step.rglob("*.bin")) and not list(step.rglob(".metadata"))  # no pickled index
    whole = load_file(step / "model.safetensors")
    model = create_model("vitc_nano_patch8_32", dim=32, depth=2, heads=2, stem_width=16, num_classes=36)
    assert {k: tuple(v.shape) for k, v in whole.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_same_world_size_resume_is_bitwise_identical(sharded_run, tmp_path):
    recipe = json.loads((sharded_run / "recipe.yaml").read_text())
    recipe["run"]["out_dir"] = str(tmp_path / "resumed")
    launch(recipe, tmp_path, "train.stop_at=3")
    launch(recipe, tmp_path, "resume=latest")
    straight, resumed = (load_file(run / "model.safetensors") for run in (sharded_run / "run", tmp_path / "resumed"))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 3])
def test_saved_at_two_resumes_at_another_world_size_with_every_tensor_equal(sharded_run, tmp_path, processes):
    recipe = json.loads((sharded_run / "recipe.yaml").read_text())
    run = tmp_path / "run"
    checkpoint = sharded_run / "run" / "checkpoints" / "step-00000003"
    recipe["run"]["out_dir"] = str(run)
    report = tmp_path / "report.json"
    launch(
        recipe, tmp_path, str(report), f"resume={checkpoint}", processes=processes, module="tests.training.fsdp_probe"
    )
    found = json.loads(report.read_text())
    assert found["processes"] == processes and found["resumed_at"] == 3
    assert found["same_names"] and found["weights"] > 0 and found["moments"] > 2 * found["weights"] - 1
    assert found["max_weight_diff"] == 0.0 and found["max_moment_diff"] == 0.0
    assert found["step_after"] == 6  # and it trained on from there


def test_a_sharded_checkpoint_resumed_without_fsdp_is_refused_in_one_line(sharded_run, tmp_path):
    recipe = json.loads((sharded_run / "recipe.yaml").read_text())
    recipe["run"]["out_dir"] = str(tmp_path / "run")
    recipe["train"]["fsdp"] = False
    path = write_recipe(tmp_path / "r.yaml", recipe)
    checkpoint = sharded_run / "run" / "checkpoints" / "step-00000003"
    done = run_cli("-m", "training.train", str(path), f"resume={checkpoint}")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "was written with train.fsdp; resume it with train.fsdp=true" in done.stderr.strip().splitlines()[-1]


# --- refusals ---------------------------------------------------------------------------------------------------


def test_the_fsdp_launch_config_with_train_fsdp_trains_sharded(tiny_shapes, tmp_path):
    recipe = tiny_recipe(tiny_shapes, tmp_path / "run", train={"steps": 2, "checkpoint_every": 0, "fsdp": True})
    recipe["data"]["num_workers"] = 0
    done = launch(recipe, tmp_path, config=str(REPO / "configs" / "accelerate" / "fsdp.yaml"))
    assert "on 2 process(es), FSDP2" in done.stdout
    assert json.loads((tmp_path / "run" / "results.json").read_text())["step"] == 2


def test_an_fsdp_launch_config_without_train_fsdp_is_refused(tiny_shapes, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    cfg = TrainConfig.from_dict(tiny_recipe(tiny_shapes, tmp_path / "run"))
    with pytest.raises(LaunchError, match=r"add train\.fsdp=true"):
        make_accelerator(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"ema_decay": 0.9}, "does not keep an EMA yet"),
        ({"precision": "fp16"}, "has no gradient scaler"),
        ({"compile": True}, "train.compile=true has not been tested with train.fsdp=true"),
    ],
)
def test_what_fsdp_cannot_do_is_refused_in_one_line(tiny_shapes, tmp_path, train, message):
    from multimodal.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(tiny_recipe(tiny_shapes, tmp_path / "run", train={"fsdp": True, **train}))
