"""The unCLIP stages end to end on tiny shapes: a tiny CLIP, then the prior (exact resume), the decoder and the
upsampler; the generate CLI on the run root and on a saved pipeline; eval.generation with a tiny judge."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from multimodal.data import load_card
from multimodal.data.embeddings import ClipEmbeddings
from multimodal.runs import load_unclip_pipeline
from tests.conftest import REPO, tiny_recipe, train_recipe
from tests.training.test_clip_task import clip_recipe


@pytest.fixture(scope="module")
def stack(tiny_shapes, tmp_path_factory):
    """A tiny CLIP, prior, decoder and upsampler trained for a few steps each; returns the run root."""
    root = tmp_path_factory.mktemp("unclip")
    tmp = root / "recipes"
    tmp.mkdir()
    train_recipe(tmp, clip_recipe(tiny_shapes, root / "clip", train={"steps": 4, "checkpoint_every": 0}))
    train_recipe(tmp, prior_recipe(tiny_shapes, root, steps=4))
    train_recipe(tmp, decoder_recipe(tiny_shapes, root))
    train_recipe(tmp, upsampler_recipe(tiny_shapes, root))
    return root


def prior_recipe(card, root, *, steps, out="prior", **train):
    recipe = tiny_recipe(card, root / out, train={"steps": steps, "checkpoint_every": 2, **train})
    recipe["task"] = {"name": "unclip_prior", "clip": str(root / "clip"), "eval_samples": 16, "sample_steps": 3}
    recipe["model"] = {
        "name": "unclip_prior_nano",
        "args": {"embed_dim": 32, "text_width": 32, "text_context": 16, "width": 32, "depth": 1, "heads": 2},
    }
    recipe["data"].pop("label")
    return recipe


def decoder_recipe(card, root):
    recipe = tiny_recipe(card, root / "decoder", train={"steps": 3, "checkpoint_every": 0, "ema_decay": 0.9})
    recipe["task"] = {"name": "unclip_decoder", "clip": str(root / "clip"), "eval_samples": 8, "sample_steps": 2}
    recipe["model"] = {
        "name": "unclip_decoder_nano",
        "args": {"image_size": 16, "embed_dim": 32, "text_width": 32, "block_out_channels": [16, 32],
                 "attention": [False, True], "context_dim": 16, "num_image_tokens": 2},
    }  # fmt: skip
    recipe["data"].update(image_size=16, caption_sampling="random")
    recipe["data"].pop("label")
    return recipe


def upsampler_recipe(card, root):
    recipe = tiny_recipe(card, root / "upsampler", train={"steps": 3, "checkpoint_every": 0})
    recipe["task"] = {"name": "unclip_upsampler", "eval_samples": 8, "sample_steps": 2}
    recipe["model"] = {
        "name": "unclip_upsampler_nano",
        "args": {"image_size": 32, "scale": 2, "crop_size": 16, "block_out_channels": [16, 32]},
    }
    recipe["data"].pop("label")
    return recipe


def test_stages_train_and_evaluate(stack, tiny_shapes):
    card = load_card(tiny_shapes)
    cache, _ = ClipEmbeddings.load(stack / "clip" / "embeddings" / f"{card.name}-train.safetensors")
    assert len(cache) == card.split("train").num_samples and cache.image_embeds.shape[1] == 32
    assert torch.allclose(cache.image_embeds.norm(dim=-1), torch.ones(len(cache)), atol=1e-5)
    assert int(cache.num_captions.min()) == 5  # the shapes card's five captions per image
    prior = json.loads((stack / "prior" / "results.json").read_text())
    assert {"eval/cos_image", "eval/cos_image_shuffled", "eval/cos_text", "eval/retrieval_top1"} <= set(prior)
    decoder = json.loads((stack / "decoder" / "results.json").read_text())
    assert -1 <= decoder["eval/clip_cos"] <= 1 and "eval_ema/clip_cos" in decoder
    assert Image.open(stack / "decoder" / "samples" / "step-00000003.png").size[0] > 16
    upsampler = json.loads((stack / "upsampler" / "results.json").read_text())
    assert upsampler["eval/psnr"] > 0 and upsampler["eval/psnr_bicubic"] > 10


def test_prior_resumes_exactly(stack, tiny_shapes, tmp_path):
    straight = train_recipe(tmp_path, prior_recipe(tiny_shapes, stack, steps=4, out="p-straight"))
    train_recipe(tmp_path, prior_recipe(tiny_shapes, stack, steps=4, out="p-resumed", stop_at=2))
    resumed = train_recipe(tmp_path, prior_recipe(tiny_shapes, stack, steps=4, out="p-resumed"), ["resume=latest"])
    assert straight["step"] == resumed["step"] == 4
    a, b = load_file(stack / "p-straight" / "model.safetensors"), load_file(stack / "p-resumed" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_missing_or_mismatched_clip_is_a_clear_error(stack, tiny_shapes, tmp_path):
    recipe = prior_recipe(tiny_shapes, stack, steps=2, out="p-bad")
    recipe["task"]["clip"] = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="not a CLIP run directory"):
        train_recipe(tmp_path, recipe)
    recipe = prior_recipe(tiny_shapes, stack, steps=2, out="p-bad2")
    recipe["model"]["args"]["embed_dim"] = 64
    with pytest.raises(ValueError, match=r"model\.args\.embed_dim=32"):
        train_recipe(tmp_path, recipe)


def generate_cli(checkpoint, out, *extra):
    cmd = [sys.executable, "-m", "multimodal.generate", "--checkpoint", str(checkpoint), "a red circle",
           "a blue star", "--n", "2", "--steps", "2", "--out", str(out), *extra]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_generate_cli_from_runs_and_from_a_saved_pipeline(stack, tmp_path):
    first = generate_cli(stack, tmp_path / "a.png", "--save", str(tmp_path / "pipe"))
    assert first.returncode == 0, first.stderr[-2000:]
    assert "2 prompt(s) x 2 images of 32 px, shown at 128 px" in first.stdout
    second = generate_cli(tmp_path / "pipe", tmp_path / "b.png")
    assert second.returncode == 0, second.stderr[-2000:]
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    bad = generate_cli(tmp_path / "nowhere", tmp_path / "c.png")
    assert bad.returncode == 2 and "does not exist" in bad.stderr and not (tmp_path / "c.png").exists()
    small = generate_cli(tmp_path / "pipe", tmp_path / "d.png", "--no-upsample", "--cell", "40", "--no-labels")
    assert small.returncode == 0, small.stderr[-2000:]
    assert "images of 16 px, shown at 40 px" in small.stdout
    assert Image.open(tmp_path / "d.png").size == (2 * (40 + 2) + 2, 2 * (40 + 2) + 2)  # 2 x 2 cells, 2 px padding


def test_a_stack_without_upsampler_saves_and_loads_back(stack, tmp_path):
    """What `make demo` builds: prior + decoder, no upsampler; saved with --save and in Python, both load back."""
    from multimodal.generate import load_pipeline
    from multimodal.pipelines.unclip import UnclipPipeline

    root = tmp_path / "no-upsampler"
    root.mkdir()
    for stage in ("prior", "decoder"):
        (root / stage).symlink_to(stack / stage)
    first = generate_cli(root, tmp_path / "a.png", "--save", str(tmp_path / "cli-pipe"))
    assert first.returncode == 0, first.stderr[-2000:]
    assert "images of 16 px, shown at 128 px" in first.stdout
    second = generate_cli(tmp_path / "cli-pipe", tmp_path / "b.png")
    assert second.returncode == 0, second.stderr[-2000:]
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()

    pipe = load_unclip_pipeline(root)
    assert pipe.upsampler is None
    pipe.save_pretrained(tmp_path / "py-pipe")
    again = UnclipPipeline.from_pretrained(tmp_path / "py-pipe")
    assert again.upsampler is None and again.upsampler_scheduler is None
    for loaded in (again, load_pipeline(tmp_path / "cli-pipe"), load_pipeline(tmp_path / "py-pipe", sampler="ddim")):
        images = loaded("a red circle", num_inference_steps=2, output_type="pt",
                        generator=torch.Generator().manual_seed(0)).images  # fmt: skip
        assert images.shape == (1, 3, 16, 16)
    expected = pipe("a red circle", num_inference_steps=2, output_type="pt",
                    generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    got = again("a red circle", num_inference_steps=2, output_type="pt",
                generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    assert torch.allclose(expected, got, atol=1e-5, rtol=0)  # two copies of the weights: float rounding only


def test_grid_labels_each_row_with_its_prompt():
    from multimodal.generate import default_cell
    from multimodal.pipelines.grid import make_grid

    assert [default_cell(s) for s in (16, 32, 64, 100, 256)] == [128, 128, 128, 200, 256]
    cells = [Image.new("RGB", (128, 128), (255, 0, 0)) for _ in range(4)]
    plain = make_grid(cells, columns=2)
    labelled = make_grid(cells, columns=2, labels=["a red circle", "a blue star above a green square"])
    assert plain.size == (2 * 130 + 2, 2 * 130 + 2)
    left = labelled.size[0] - plain.size[0]
    assert 40 < left <= 200 + 4 and labelled.size[1] == plain.size[1]  # a label column, wrapped at 200 px
    label_column = np.asarray(labelled)[:, :left]
    assert (label_column < 128).any(axis=2).sum() > 50  # dark text pixels in it
    with pytest.raises(ValueError, match="1 labels for 2 rows"):
        make_grid(cells, columns=2, labels=["one"])


def test_eval_generation_reports_every_metric(stack, tiny_shapes, tmp_path):
    from eval.generation import load_judge
    from multimodal.evaluation import evaluate_generation
    from multimodal.generate import load_pipeline

    judge_recipe = tiny_recipe(tiny_shapes, stack / "judge", train={"steps": 2, "checkpoint_every": 0})
    train_recipe(tmp_path, judge_recipe)
    pipe = load_pipeline(stack)
    with pytest.warns(UserWarning, match="never saw the held-out ones"):
        judge = load_judge(stack / "judge")  # a 36-way judge: held-out accuracy reads 0, and it says so
    results = evaluate_generation(pipe, judge, n=1, steps=2, dataset=str(tiny_shapes), real_images=64,
                                  grid_dir=tmp_path)  # fmt: skip
    for cond in ("prior", "text_embedding"):
        assert results[cond]["seen"]["n"] == 30 and results[cond]["heldout"]["n"] == 6
        for key in ("prompt_accuracy", "color_accuracy", "shape_accuracy"):
            assert 0 <= results[cond]["seen"][key] <= 1
        assert results[cond]["seen"]["fd_judge_features"] >= 0
    assert 0 <= results["real"]["judge_accuracy"] <= 1
    assert (tmp_path / "prior-seen.png").is_file()


def test_eval_generation_cli_averages_several_seeds(stack, tiny_shapes, tmp_path, capsys):
    import json

    from eval.generation import main

    train_recipe(tmp_path, tiny_recipe(tiny_shapes, tmp_path / "judge", train={"steps": 2, "checkpoint_every": 0}))
    out = tmp_path / "eval" / "gen.json"
    args = ["--checkpoint", str(stack), "--judge", str(tmp_path / "judge"), "--n", "1", "--steps", "2", "--dataset",
            str(tiny_shapes), "--no-ablation", "--device", "cpu", "--threads", "1", "--out", str(out)]  # fmt: skip
    assert main([*args, "--seed", "0,1"]) == 0
    results = json.loads(out.read_text())
    seen = results["prior"]["seen"]
    per_seed = [r["prior"]["seen"]["prompt_accuracy"] for r in results["per_seed"]]
    assert results["seeds"] == [0, 1] and seen["n"] == 2 * 30 and "text_embedding" not in results
    assert seen["prompt_accuracy"] == pytest.approx(sum(per_seed) / 2)
    assert seen["prompt_accuracy_std"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2**0.5)
    printed = capsys.readouterr()
    assert "mean +- std over seeds 0,1" in printed.out and "never saw the held-out ones" in printed.err
    assert (out.parent / "gen-prior-seen.png").is_file()  # the first seed's grids
    assert main([*args, "--seed", "0"]) == 0  # one seed: the layout of evaluate_generation
    single = json.loads(out.read_text())
    assert single["seed"] == 0 and single["prior"]["seen"]["prompt_accuracy"] == per_seed[0]


def test_load_judge_takes_a_pair_classifier_or_a_colour_and_a_shape_one(tiny_shapes, tmp_path):
    from eval.generation import load_judge
    from multimodal.config import ConfigError
    from multimodal.evaluation import Judge, PairJudge

    for label in ("color_shape", "color", "shape"):
        recipe = tiny_recipe(tiny_shapes, tmp_path / label, train={"steps": 2, "checkpoint_every": 0})
        recipe["data"]["label"] = label
        train_recipe(tmp_path, recipe)
    with pytest.warns(UserWarning, match="never saw the held-out ones"):
        assert isinstance(load_judge(tmp_path / "color_shape"), Judge)
    pair = load_judge([tmp_path / "shape", tmp_path / "color"])  # either order
    assert (
        isinstance(pair, PairJudge) and pair.color.model.head.out_features == pair.shape.model.head.out_features == 6
    )
    classes, _ = pair(torch.rand(4, 3, 16, 16) * 2 - 1)
    assert classes.shape == (4,) and ((classes >= 0) & (classes < 36)).all()
    with pytest.raises(ConfigError, match=r"--judge got classifiers of \['color'\]"):
        load_judge([tmp_path / "color"])
    with pytest.raises(ConfigError, match="was trained on label 'color'; give one color_shape classifier"):
        load_judge([tmp_path / "color", tmp_path / "color"])
