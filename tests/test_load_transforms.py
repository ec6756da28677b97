"""multimodal.load_model_and_transforms: a run's model with its evaluation preprocessing, equal to SampleDecoder's."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import multimodal
from multimodal.config import ConfigError
from multimodal.data import ImageTransform, SampleDecoder
from multimodal.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from multimodal.models.clip import CLIP
from tests.conftest import TINY_CLIP
from tests.readme import readme_commands
from training.config import TrainConfig


# The README's zero-shot example, run as written from a folder holding runs/clip-shapes-demo and my_image.png.
def readme_example() -> str:
    """The README's Python zero-shot example, as written there."""
    return next(c.text for c in readme_commands() if c.kind == "python" and "load_model_and_transforms" in c.text)


def write_clip_run(path: Path, *, seed: int = 0) -> Path:
    """A CLIP run directory as training writes one (the resolved config.yaml, model.safetensors), untrained."""
    cfg = TrainConfig.from_dict(
        {
            "run": {"name": path.name, "out_dir": str(path)},
            "task": {"name": "clip"},
            "model": TINY_CLIP,
            "data": {"image_size": 32, "mean": OPENAI_CLIP_MEAN, "std": OPENAI_CLIP_STD},
        }
    )
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(cfg.to_yaml())
    torch.manual_seed(seed)
    model = multimodal.create_model(cfg.model.name, **cfg.model.args)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
    return path


def _noise(mode: str, size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A random image of ``mode`` (every pixel differs, so a resampling difference would show)."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2}[mode]
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("mode", "size"),
    [("RGB", (48, 48)), ("RGBA", (40, 40)), ("L", (33, 33)), ("RGB", (80, 45)), ("LA", (20, 50)), ("RGB", (32, 32))],
)
def test_transform_equals_the_sample_decoder(mode: str, size: tuple[int, int]):
    img = _noise(mode, size)
    decoder = SampleDecoder(image_size=32, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
    transform = ImageTransform(image_size=32, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
    expected = decoder({"__key__": "k", "png": _png(img)})["image"]
    got = transform(Image.open(io.BytesIO(_png(img))))
    assert got.shape == (3, 32, 32) and got.dtype == torch.float32
    assert torch.equal(got, expected)
    assert torch.equal(transform(img), expected)  # an image in memory, not read from a file


def test_transform_repr_and_bad_input():
    transform = ImageTransform(image_size=32, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    assert repr(transform) == "ImageTransform(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))"
    with pytest.raises(ValueError, match=r"takes a PIL image \(PIL.Image.open\(path\)\), got Tensor"):
        transform(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="image_size must be >= 1"):
        ImageTransform(image_size=0)


def test_load_model_and_transforms_gives_the_run_model_and_its_preprocessing(tmp_path):
    run = write_clip_run(tmp_path / "clip")
    model, preprocess = multimodal.load_model_and_transforms(run)
    assert isinstance(model, CLIP) and not model.training
    assert preprocess == ImageTransform(image_size=32, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
    reference = multimodal.load_checkpoint(run)
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert multimodal.get_tokenizer(model).context_length == TINY_CLIP["args"]["text"]["context_length"]
    with pytest.raises(ValueError, match="get_tokenizer takes a CLIP model"):
        multimodal.get_tokenizer(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("device", ["cpu:0", torch.device("cpu", 0)])
def test_a_checkpoint_loads_on_the_indexed_cpu_device_of_a_multi_process_launch(tmp_path, device):
    # Each process of `accelerate launch --multi_gpu` on CPUs computes on "cpu:0"; safetensors knows only "cpu".
    run = write_clip_run(tmp_path / "clip")
    model = multimodal.load_checkpoint(run, device=device)
    reference = multimodal.load_checkpoint(run)
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True)
    )


def test_loading_a_checkpoint_leaves_the_global_random_state_alone(tmp_path):
    # A run that loads a CLIP (the unCLIP tasks, an embedding cache being built) draws the same numbers afterwards
    # as one that did not: whether a cache existed must not change a training run.
    run = write_clip_run(tmp_path / "clip")
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    multimodal.load_checkpoint(run)
    assert torch.equal(torch.rand(4), expected)


def test_a_run_that_takes_no_images_has_no_transform(tmp_path):
    run = tmp_path / "prior"
    run.mkdir()
    (run / "config.yaml").write_text("task: {name: unclip_prior}\nmodel: {name: unclip_prior_nano}\n")
    with pytest.raises(ConfigError) as e:
        multimodal.load_model_and_transforms(run)
    assert str(e.value) == (
        f"{run} is an unCLIP prior run (model unclip_prior_nano; for multimodal.generate, given the folder above it), "
        "which takes no images to preprocess; image transforms come with image-classifier, CLIP and GATO runs "
        "(load this one with multimodal.load_checkpoint)"
    )


def test_gato_images_stay_in_unit_range():
    cfg = {"task": {"name": "gato"}, "data": {"image_size": 64, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
    transform = multimodal.runs.run_transform(cfg)
    assert transform == ImageTransform(image_size=64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch, capsys):
    write_clip_run(tmp_path / "runs" / "clip-shapes-demo")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(readme_example(), scope)
    probs = scope["probs"]
    assert scope["preprocess"](scope["image"]).shape == (3, 32, 32)
    assert probs.shape == (1, 3)
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(1))
    printed = capsys.readouterr().out
    assert printed.startswith("{'red circle': ") and "'green star': " in printed


def test_an_image_classifier_run_comes_with_its_transform(tmp_path):
    cfg = TrainConfig.from_dict(
        {
            "model": {"name": "vit_nano_patch4_32", "args": {"dim": 32, "depth": 1, "heads": 2, "num_classes": 3}},
            "data": {"image_size": 32},
        }
    )
    run = tmp_path / "vit"
    run.mkdir()
    (run / "config.yaml").write_text(cfg.to_yaml())
    save_file(multimodal.create_model(cfg.model.name, **cfg.model.args).state_dict(), str(run / "model.safetensors"))
    model, preprocess = multimodal.load_model_and_transforms(run)
    assert preprocess == ImageTransform(image_size=32)  # the recipe's default normalisation: ImageNet's
    logits = model(preprocess(_noise("L", (64, 40)))[None])
    assert logits.shape == (1, 3)
