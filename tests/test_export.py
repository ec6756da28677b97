"""multimodal.export: a CLIP run loads back in open_clip (``local-dir:``) with the same embeddings, preprocessing and
tokens; a ViT classifier in timm with the same logits; an unCLIP stack as the same diffusers pipeline; what a target
cannot hold, a wrong --to and an occupied --out are one-line refusals that leave nothing behind. Offline."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import pytest
import timm
import torch
from PIL import Image
from torch import nn

import multimodal
from multimodal.data import load_card
from multimodal.export import export_diffusers, export_open_clip, export_timm, main
from multimodal.pipelines.unclip import UnclipPipeline
from multimodal.runs import load_unclip_pipeline, write_run
from tests.conftest import run_cli
from tests.test_runs import write_stack

pytestmark = pytest.mark.usefixtures("offline")

TOL = 1e-5
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
TOWER = {"width": 32, "layers": 1, "heads": 2, "stem": "patch", "patch_size": 8}
TEXT = {"width": 32, "layers": 1, "heads": 2, "context_length": 16}
CLIP_VARIANTS = {
    "token_pool_gelu": {"embed_dim": 24, "vision": TOWER, "text": TEXT},
    "mean_pool_quick_gelu": {  # and what else open_clip's config must carry: no ln_pre, layer scale, eps, biases
        "embed_dim": 24,
        "vision": {**TOWER, "pool": "mean", "act": "quick_gelu", "pre_norm": False, "layer_scale_init": 0.1,
                   "norm_eps": 1e-6},
        "text": {**TEXT, "act": "quick_gelu", "layer_scale_init": 0.1, "proj_bias": True},
        "init_logit_bias": -5.0,
    },
}  # fmt: skip
VIT_VARIANTS = {
    "token_pool": {},
    "mean_pool_quick_gelu": {"pool": "mean", "class_token": False, "act": "quick_gelu", "layer_scale_init": 0.1,
                             "qkv_bias": False},
}  # fmt: skip
PROMPTS = ["a red circle", "a blue square above a green star", "a caption far too long for sixteen tokens " * 3]


def perturbed(model: nn.Module) -> nn.Module:
    """``model`` with every weight moved off its initial value (zero heads, unit layer scales, zero biases)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def clip_run(path: Path, args: dict[str, Any]) -> tuple[Path, nn.Module]:
    model = perturbed(multimodal.create_model("clip_nano", **args))
    config = {"task": {"name": "clip"}, "model": {"name": "clip_nano", "args": args},
              "data": {"image_size": 32, "mean": MEAN, "std": STD}}  # fmt: skip
    return write_run(path, config, model), model


def vit_run(path: Path, extra: dict[str, Any]) -> tuple[Path, nn.Module]:
    args = {"img_size": 32, "patch_size": 8, "dim": 32, "depth": 2, "heads": 2, "num_classes": 36, **extra}
    model = perturbed(multimodal.create_model("vit_nano_patch4_32", **args))
    config = {
        "task": {"name": "classification"},
        "model": {"name": "vit_nano_patch4_32", "args": args},
        "data": {"dataset": "shapes", "label": "color_shape", "image_size": 32, "mean": MEAN, "std": STD},
    }
    return write_run(path, config, model), model


def sample_images() -> list[Image.Image]:
    """Random RGB images of several sizes and aspects (resized and centre-cropped to 32 px)."""
    rng = np.random.default_rng(0)
    sizes = [(32, 32), (50, 50), (48, 40), (64, 96), (37, 53), (101, 64)]  # (width, height); odd ones round
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("variant", CLIP_VARIANTS)
def test_clip_loads_in_open_clip_with_the_same_preprocessing_tokens_and_embeddings(tmp_path: Path, variant: str):
    run, ours = clip_run(tmp_path / "run", CLIP_VARIANTS[variant])
    out = export_open_clip(run, tmp_path / "exported")
    assert sorted(p.name for p in out.iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "run"]  # no temporary folder left
    theirs, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    _, transform = multimodal.load_model_and_transforms(run)
    theirs.eval()

    pixels = []
    for image in sample_images():
        theirs_x, ours_x = preprocess(image), transform(image)
        assert torch.equal(theirs_x, ours_x), image.size
        pixels.append(ours_x)
    tokens = tokenizer(PROMPTS)
    assert torch.equal(tokens, multimodal.get_tokenizer(ours)(PROMPTS))
    assert tokens.shape == (3, 16)
    with torch.no_grad():
        images = torch.stack(pixels)
        assert max_diff(theirs.encode_image(images), ours.encode_image(images)) <= TOL
        assert max_diff(theirs.encode_text(tokens), ours.encode_text(tokens)) <= TOL
    assert torch.equal(theirs.logit_scale.detach(), ours.logit_scale.detach())
    assert (theirs.logit_bias is None) == (ours.logit_bias is None)
    if ours.logit_bias is not None:
        assert torch.equal(theirs.logit_bias.detach(), ours.logit_bias.detach())
    config = json.loads((out / "open_clip_config.json").read_text())
    mean_pool = variant.startswith("mean")
    assert config["model_cfg"]["quick_gelu"] is mean_pool
    assert config["model_cfg"]["vision_cfg"]["pool_type"] == ("avg" if mean_pool else "tok")
    preprocess_cfg = {"size": 32, "mode": "RGB", "mean": MEAN, "std": STD, "interpolation": "bicubic",
                      "resize_mode": "shortest", "fill_color": 0}  # fmt: skip
    assert config["preprocess_cfg"] == preprocess_cfg


@pytest.mark.parametrize("variant", VIT_VARIANTS)
def test_vit_loads_in_timm_with_the_same_logits_preprocessing_and_labels(tmp_path: Path, variant: str):
    run, ours = vit_run(tmp_path / "run", VIT_VARIANTS[variant])
    out = export_timm(run, tmp_path / "exported")
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "vit_tiny_patch16_224" and config["num_classes"] == 36
    from_dir = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    by_name = timm.create_model(
        config["architecture"],
        pretrained=True,
        pretrained_cfg_overlay={"file": str(out / "model.safetensors"), "num_classes": config["num_classes"]},
        **config["model_args"],
    ).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits = ours(x)
        assert max_diff(from_dir(x), logits) <= TOL
        assert max_diff(by_name(x), logits) <= TOL
    assert list(from_dir.pretrained_cfg["label_names"]) == list(load_card("shapes").class_names("color_shape"))
    data_config = timm.data.resolve_data_config({}, model=from_dir)
    assert data_config == {"input_size": (3, 32, 32), "interpolation": "bicubic", "mean": MEAN, "std": STD,
                           "crop_pct": 1.0, "crop_mode": "center"}  # fmt: skip
    preprocess = timm.data.create_transform(**data_config)
    _, transform = multimodal.load_model_and_transforms(run)
    for image in sample_images():
        assert torch.equal(preprocess(image), transform(image)), image.size


def sample(pipe: UnclipPipeline) -> torch.Tensor:
    """One prompt's image, seeded, in one step of each stage."""
    generator = torch.Generator().manual_seed(0)
    return pipe(["a red circle"], num_inference_steps=1, output_type="pt", generator=generator).images


def test_unclip_stack_exports_as_the_same_pipeline(tmp_path: Path):
    write_stack(tmp_path / "stack", upsampler=False)
    assert main(["--checkpoint", str(tmp_path / "stack"), "--to", "diffusers", "--out", str(tmp_path / "pipe")]) == 0
    exported = UnclipPipeline.from_pretrained(str(tmp_path / "pipe"))
    reference = load_unclip_pipeline(tmp_path / "stack")
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    # from_pretrained leaves the weights in unaligned memory, where CPU kernels may round differently (~1e-6)
    assert max_diff(exported.image_embeddings(pixels), reference.image_embeddings(pixels)) <= TOL
    assert max_diff(sample(exported), sample(reference)) <= TOL
    again = UnclipPipeline.from_pretrained(str(export_diffusers(tmp_path / "pipe", tmp_path / "again")))
    for name in ("clip", "prior", "decoder"):  # a saved pipeline exports as itself
        ours, theirs = getattr(again, name).state_dict(), getattr(reference, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name


def one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return err


@pytest.mark.parametrize(
    "vision, what",
    [
        ({"model": "aa_resnet18", "model_kwargs": {"channels": [8, 16, 32, 64], "stem": "small", "img_size": 32,
                                                   "heads": 2}}, "vision.model='aa_resnet18'"),
        ({"width": 32, "layers": 1, "heads": 2, "stem": "conv"}, "vision.stem='conv'"),
    ],
)  # fmt: skip
def test_a_tower_open_clip_cannot_express_is_refused_before_anything_is_written(tmp_path, capsys, vision, what):
    run, _ = clip_run(tmp_path / "run", {"embed_dim": 24, "vision": vision, "text": TEXT})
    with pytest.raises(ValueError, match=re.escape(f"{run} cannot be exported to open_clip: {what} has no open_clip")):
        export_open_clip(run, tmp_path / "exported")
    err = one_line_error(capsys, ["--checkpoint", str(run), "--to", "open_clip", "--out", str(tmp_path / "exported")])
    assert "no open_clip counterpart" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no folder, no temporary one


def test_wrong_target_and_occupied_out_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture):
    vit, _ = vit_run(tmp_path / "vit", {})
    clip, _ = clip_run(tmp_path / "clip", CLIP_VARIANTS["token_pool_gelu"])
    out = tmp_path / "out"
    err = one_line_error(capsys, ["--checkpoint", str(vit), "--to", "open_clip", "--out", str(out)])
    assert (
        "an image-classifier run" in err
        and "not a CLIP run that --to open_clip takes; it exports with --to timm" in err
    )
    err = one_line_error(capsys, ["--checkpoint", str(clip), "--to", "diffusers", "--out", str(out)])
    assert "it exports with --to open_clip" in err
    err = one_line_error(capsys, ["--checkpoint", str(tmp_path / "nowhere"), "--to", "timm", "--out", str(out)])
    assert "does not exist" in err
    conv_stem, _ = vit_run(tmp_path / "vitc", {"stem": "conv"})
    err = one_line_error(capsys, ["--checkpoint", str(conv_stem), "--to", "timm", "--out", str(out)])
    assert "cannot be exported to timm: timm's VisionTransformer has no equivalent of stem='conv'" in err
    assert not out.exists()

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    err = one_line_error(capsys, ["--checkpoint", str(vit), "--to", "timm", "--out", str(out)])
    assert "exists and is not empty; pass --force" in err and (out / "keep.txt").read_text() == "mine"
    err = one_line_error(capsys, ["--checkpoint", str(vit), "--to", "timm", "--out", str(vit), "--force"])
    assert "holds the checkpoint" in err and (vit / "model.safetensors").is_file()
    assert main(["--checkpoint", str(vit), "--to", "timm", "--out", str(out), "--force"]) == 0
    assert capsys.readouterr().out.startswith(f'wrote {out}; load it with timm.create_model("local-dir:{out}"')
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip", "out", "vit", "vitc"]  # the old folder is gone too


def test_help_in_a_subprocess() -> None:
    done = run_cli("-m", "multimodal.export", "--help", timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--checkpoint" in done.stdout and "{open_clip,timm,diffusers}" in done.stdout and "--force" in done.stdout
