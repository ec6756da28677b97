"""The unCLIP decoder and upsampler: conditioning, guidance dropout, samplers, and a loss that falls."""

from __future__ import annotations

import inspect

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from multimodal import create_model
from multimodal.models.decoder import CpuAwareAttnProcessor, UnclipDecoder, UnclipUpsampler
from multimodal.models.diffusion import SAMPLERS, loss_weights, make_noise_scheduler


def tiny_decoder(**overrides) -> UnclipDecoder:
    args = dict(
        image_size=8, embed_dim=16, text_width=12, block_out_channels=(16, 32), attention=(False, True),
        attention_head_dim=8, context_dim=16, num_image_tokens=2, norm_num_groups=8, num_train_timesteps=100,
    )  # fmt: skip
    return UnclipDecoder(**{**args, **overrides})


def tiny_upsampler(**overrides) -> UnclipUpsampler:
    args = dict(image_size=16, scale=2, crop_size=8, block_out_channels=(16, 32), norm_num_groups=8,
                num_train_timesteps=100)  # fmt: skip
    return UnclipUpsampler(**{**args, **overrides})


def conditioning(B: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(B, 16, generator=g)
    enc = torch.randn(B, 5, 12, generator=g)
    pad = torch.arange(5)[None] > torch.randint(1, 5, (B, 1), generator=g)
    return embeds, enc, pad


def test_registered_presets_build():
    assert isinstance(create_model("unclip_decoder_nano"), UnclipDecoder)
    assert isinstance(create_model("unclip_upsampler_nano"), UnclipUpsampler)


def test_dropped_caption_equals_no_caption_and_dropped_image_ignores_the_embedding():
    dec = tiny_decoder().eval()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 70])
    embeds, enc, pad = conditioning(2)
    drop = torch.ones(2, dtype=torch.bool)
    no_text = dec.denoise(x, t, embeds)
    assert torch.allclose(dec.denoise(x, t, embeds, enc, pad, drop_text=drop), no_text, atol=1e-5)
    assert (dec.denoise(x, t, embeds, enc, pad) - no_text).abs().max() > 1e-4  # the caption is read
    other = torch.randn(2, 16)
    a = dec.denoise(x, t, embeds, drop_image=drop)
    assert torch.allclose(a, dec.denoise(x, t, other, drop_image=drop), atol=1e-6)


def test_attention_is_fused_in_fp32_and_composite_in_bf16_on_the_cpu_with_the_same_result(monkeypatch):
    dec = tiny_decoder().eval()
    fused = tiny_decoder().eval()
    fused.load_state_dict(dec.state_dict())
    fused.unet.set_attn_processor(AttnProcessor2_0())
    x, t = torch.randn(4, 3, 8, 8), torch.tensor([3, 40, 70, 99])
    embeds, enc, pad = conditioning(4)
    assert torch.equal(dec.denoise(x, t, embeds, enc, pad), fused.denoise(x, t, embeds, enc, pad))  # fp32: fused

    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k)
    )
    outs, grads, fused_calls = [], [], []
    for model in (dec, fused):
        calls.clear()
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.denoise(x, t, embeds, enc, pad)
        out.float().pow(2).mean().backward()
        outs.append(out.float())
        grads.append(model.image_tokens.weight.grad.clone())
        fused_calls.append(len(calls))
    assert fused_calls[0] == 0 and fused_calls[1] > 0  # ours took the composite path in bf16
    assert (outs[0] - outs[1]).abs().max() < 0.05 * outs[1].abs().max()  # bf16 rounding apart
    assert torch.nn.functional.cosine_similarity(grads[0].flatten(), grads[1].flatten(), dim=0) > 0.99


def test_the_attention_processor_takes_every_keyword_diffusers_passes_its_own():
    # diffusers' Attention drops (with a warning) the keywords a processor's signature does not list, e.g. the temb
    # that UNet2DModel's mid-block passes
    ours = set(inspect.signature(CpuAwareAttnProcessor.__call__).parameters)
    for theirs in (AttnProcessor2_0, AttnProcessor):
        assert {p for p in inspect.signature(theirs.__call__).parameters if p not in ("args", "kwargs")} <= ours
    up = tiny_upsampler(attention=(False, False))
    assert any(type(m.processor) is CpuAwareAttnProcessor for m in up.modules() if hasattr(m, "processor"))


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="one flag per level"):
        tiny_decoder(attention=(False,))
    with pytest.raises(ValueError, match="fully convolutional"):
        tiny_upsampler(attention=(False, True))
    with pytest.raises(ValueError, match="scale must be 2 or 4"):
        tiny_upsampler(scale=3)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_gives_finite_images_in_range(sampler):
    dec = tiny_decoder().eval()
    embeds, enc, pad = conditioning(2)
    out = dec.sample(embeds, enc, pad, num_inference_steps=5, sampler=sampler,
                     generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all() and out.abs().max() <= 1
    again = dec.sample(embeds, enc, pad, num_inference_steps=5, sampler=sampler,
                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.equal(out, again)


def test_min_snr_weights_cap_the_x0_weight_at_gamma():
    sched = make_noise_scheduler(prediction_type="v_prediction")
    t = torch.arange(0, 1000, 50)
    alphas = sched.alphas_cumprod[t]
    snr = alphas / (1 - alphas)
    x0_weight = loss_weights(sched, t, min_snr_gamma=5.0) * (snr + 1)  # ||v err||^2 = (snr + 1) ||x0 err||^2
    assert torch.allclose(x0_weight, snr.clamp(max=5.0), rtol=1e-5)
    assert torch.equal(loss_weights(sched, t, min_snr_gamma=None), torch.ones(len(t)))


def test_decoder_loss_falls_on_embedding_coded_images():
    """Four flat-colour images, each with its own embedding: the decoder learns to render them."""
    torch.manual_seed(0)
    dec = tiny_decoder(image_drop_prob=0.0, text_drop_prob=0.0, min_snr_gamma=None)
    colors = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]])
    images = colors[:, :, None, None].expand(4, 3, 8, 8)
    embeds = torch.eye(4, 16) * 4
    opt = torch.optim.AdamW(dec.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        idx = torch.randint(0, 4, (32,))
        loss, _ = dec(images[idx], embeds[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-15:]) / 15 < 0.5 * sum(losses[:15]) / 15
    dec.eval()
    out = dec.sample(embeds, num_inference_steps=20, guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
    mean_color = out.mean(dim=(2, 3))  # (4, 3)
    assert (mean_color - colors).abs().mean() < 0.35


def test_upsampler_trains_on_crops_and_samples_at_full_size():
    torch.manual_seed(0)
    up = tiny_upsampler(min_snr_gamma=None)
    images = torch.rand(8, 3, 16, 16) * 2 - 1
    loss, _ = up(images)  # a random 8 px crop inside
    loss.backward()
    assert torch.isfinite(loss)
    out = up.eval().sample(torch.rand(2, 3, 8, 8) * 2 - 1, num_inference_steps=3,
                           generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.shape == (2, 3, 16, 16) and out.abs().max() <= 1


def test_degrade_blurs_and_adds_noise_per_sample():
    up = tiny_upsampler()
    low = torch.zeros(2, 3, 8, 8)
    low[:, :, 4, 4] = 1.0
    out = up.degrade(low, sigma=torch.tensor([0.0, 1.0]), noise_std=0.0)
    assert torch.equal(out[0], low[0])  # sigma 0: untouched
    assert out[1, 0, 4, 4] < 0.5 and out[1, 0, 4, 5] > 0  # spread to the neighbours
    torch.manual_seed(0)
    noisy = up.degrade(low, sigma=0.0, noise_std=torch.tensor([0.0, 0.1]))
    assert torch.equal(noisy[0], low[0]) and 0.05 < (noisy[1] - low[1]).std() < 0.15
