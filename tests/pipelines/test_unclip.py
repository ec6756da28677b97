"""The unCLIP pipeline: text -> images, save_pretrained / from_pretrained in a fresh process, variations,
interpolation and text diffs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from multimodal.pipelines.unclip import ClipEncoder, UnclipPipeline, slerp
from tests.conftest import REPO

CLIP_ARGS = {
    "embed_dim": 16,
    "vision": {"width": 16, "layers": 1, "heads": 2, "stem": "patch", "patch_size": 8, "img_size": 32},
    "text": {"width": 24, "layers": 1, "heads": 2, "context_length": 8},
}


def tiny_pipeline(sampler: str = "dpmsolver++", *, upsampler: bool = True) -> UnclipPipeline:
    from multimodal import create_model

    torch.manual_seed(0)
    clip = ClipEncoder(model="clip_nano", model_args=CLIP_ARGS)
    prior = create_model("unclip_prior_nano", embed_dim=16, text_width=24, text_context=8, width=32, depth=1, heads=2)
    decoder = create_model(
        "unclip_decoder_nano", image_size=8, embed_dim=16, text_width=24, block_out_channels=(16, 32),
        attention=(False, True), context_dim=16, num_image_tokens=2,
    )  # fmt: skip
    up = create_model("unclip_upsampler_nano", image_size=16, scale=2, crop_size=8, block_out_channels=(16, 32))
    return UnclipPipeline.from_components(clip, prior, decoder, up if upsampler else None, sampler=sampler)


def generate(pipe: UnclipPipeline) -> np.ndarray:
    out = pipe(["a red circle", "a blue star"], num_images_per_prompt=2, num_inference_steps=3,
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    size = 8 if pipe.upsampler is None else 16
    assert len(out.images) == 4 and all(isinstance(im, Image.Image) and im.size == (size, size) for im in out.images)
    return np.stack([np.asarray(im) for im in out.images])


def test_pipeline_returns_pil_images_deterministically():
    pipe = tiny_pipeline()
    a, b = generate(pipe), generate(pipe)
    assert np.array_equal(a, b)
    small = pipe("a red circle", num_inference_steps=2, upsample=False, output_type="pt",
                 generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    assert small.shape == (1, 3, 8, 8)


@pytest.mark.parametrize("upsampler", [True, False], ids=["prior+decoder+upsampler", "prior+decoder"])
def test_save_and_load_in_a_fresh_process_gives_identical_images(tmp_path, upsampler):
    pipe = tiny_pipeline(upsampler=upsampler)
    expected = generate(pipe)
    pipe.save_pretrained(tmp_path / "pipe")
    np.save(tmp_path / "expected.npy", expected)
    script = f"""
import numpy as np, torch
from multimodal.pipelines.unclip import UnclipPipeline
from tests.pipelines.test_unclip import generate
pipe = UnclipPipeline.from_pretrained({str(tmp_path / "pipe")!r})
assert (pipe.upsampler is None) == {not upsampler}, pipe.upsampler
got = generate(pipe)
assert np.array_equal(got, np.load({str(tmp_path / "expected.npy")!r})), np.abs(got.astype(int) - np.load(
    {str(tmp_path / "expected.npy")!r}).astype(int)).max()
print("identical", got.shape)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    size = 16 if upsampler else 8
    assert f"identical (4, {size}, {size}, 3)" in result.stdout
    if not upsampler:  # diffusers records an absent optional component as null
        index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
        assert index["upsampler"] == index["upsampler_scheduler"] == [None, None]


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_other_samplers(sampler):
    pipe = tiny_pipeline(sampler)
    assert type(pipe.decoder_scheduler).__name__ == {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler"}[sampler]
    generate(pipe)


def test_variations_interpolation_and_text_diff():
    pipe = tiny_pipeline()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    other = Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    variations = pipe.variations(
        image, num_images=3, num_inference_steps=2, generator=torch.Generator().manual_seed(0)
    )
    assert len(variations) == 3 and variations[0].size == (16, 16)
    path = pipe.interpolate(image, other, steps=3, num_inference_steps=2, output_type="pt")
    assert path.shape == (3, 3, 16, 16)
    diff = pipe.text_diff(image, "a red circle", "a blue circle", steps=2, num_inference_steps=2, output_type="pt")
    assert diff.shape == (2, 3, 16, 16)
    # t = 0 of the interpolation is image_a's own embedding, decoded from the same seed as a plain decode
    same = pipe.decode(pipe.image_embeddings(image), num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(path[:1], same, atol=1e-5)


def test_slerp_endpoints_and_unit_norm():
    a, b = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-6) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    mid = slerp(a, b, 0.5)
    assert float(mid.norm()) == pytest.approx(1.0, abs=1e-5)
    assert float((mid * a).sum()) == pytest.approx(float((mid * b).sum()), abs=1e-5)


def test_mismatched_stages_are_a_clear_error():
    from multimodal import create_model

    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match="upsampler and its scheduler together"):
        UnclipPipeline(pipe.clip, pipe.prior, pipe.decoder, pipe.upsampler, pipe.prior_scheduler,
                       pipe.decoder_scheduler, None)  # fmt: skip
    wrong = create_model("unclip_upsampler_nano", image_size=64, scale=4, block_out_channels=(16, 32))
    with pytest.raises(ValueError, match="upsampler's 4x turns into 32 px"):
        UnclipPipeline.from_components(pipe.clip, pipe.prior, pipe.decoder, wrong)


def test_bad_prompts_are_clear_errors():
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        pipe([""], num_inference_steps=2)
    with pytest.raises(ValueError, match="num_images_per_prompt"):
        pipe("a red circle", num_images_per_prompt=0)
