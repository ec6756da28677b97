"""The unCLIP diffusion prior: conditioning, guidance, candidate selection, and a loss that falls."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from multimodal import create_model
from multimodal.models.prior import DiffusionPrior


def tiny_prior(**overrides) -> DiffusionPrior:
    args = dict(embed_dim=16, text_width=12, text_context=6, width=32, depth=2, heads=2, num_train_timesteps=100)
    return DiffusionPrior(**{**args, **overrides})


def text_inputs(B: int, L: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(B, 16, generator=g), dim=-1)
    enc = torch.randn(B, L, 12, generator=g)
    pad = torch.arange(L)[None] > torch.randint(1, L, (B, 1), generator=g)  # True after a random end
    return text, enc, pad


def test_registered_presets_build():
    model = create_model("unclip_prior_nano", depth=1)
    assert isinstance(model, DiffusionPrior) and model.config.text_context == 16


def test_unconditional_rows_ignore_the_text():
    prior = tiny_prior().eval()
    x = torch.randn(3, 16)
    t = torch.tensor([5, 50, 90])
    a, b = text_inputs(3, seed=0), text_inputs(3, seed=1)
    uncond = torch.ones(3, dtype=torch.bool)
    out_a = prior.net(x, t, *a, uncond=uncond)
    out_b = prior.net(x, t, *b, uncond=uncond)
    assert torch.allclose(out_a, out_b, atol=1e-6)
    assert (prior.net(x, t, *a) - prior.net(x, t, *b)).abs().max() > 1e-3  # conditioned rows do depend on it


def test_padding_tokens_do_not_matter():
    prior = tiny_prior().eval()
    x, t = torch.randn(2, 16), torch.tensor([10, 60])
    text, enc, pad = text_inputs(2)
    changed = enc.clone()
    changed[pad] = 1e3  # garbage in the padded positions
    assert torch.allclose(prior.net(x, t, text, enc, pad), prior.net(x, t, text, changed, pad), atol=1e-5)


def test_too_many_text_tokens_is_a_clear_error():
    prior = tiny_prior()
    text, enc, pad = text_inputs(2, L=6)
    with pytest.raises(ValueError, match="exceed the prior's text_context"):
        prior.net(torch.randn(2, 16), torch.tensor([1, 2]), text, torch.cat([enc, enc], 1), torch.cat([pad, pad], 1))


def test_sample_is_unit_norm_deterministic_and_keeps_the_best_candidate(monkeypatch):
    prior = tiny_prior().eval()
    text, enc, pad = text_inputs(4)
    kw = dict(num_inference_steps=4, generator=None)
    a = prior.sample(text, enc, pad, **{**kw, "generator": torch.Generator().manual_seed(0)})
    b = prior.sample(text, enc, pad, **{**kw, "generator": torch.Generator().manual_seed(0)})
    assert a.shape == (4, 16) and torch.allclose(a.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.equal(a, b)
    # with 3 candidates the kept one has the highest dot product with the text among the 3 drawn
    drawn = {}
    import multimodal.models.prior as prior_module

    real = prior_module.guided_sample

    def spy(*args, **kwargs):
        drawn["x"] = real(*args, **kwargs)
        return drawn["x"]

    monkeypatch.setattr(prior_module, "guided_sample", spy)
    kept = prior.sample(text, enc, pad, num_candidates=3, num_inference_steps=4,
                        generator=torch.Generator().manual_seed(1))  # fmt: skip
    cands = F.normalize(drawn["x"], dim=-1).view(4, 3, 16)
    best = cands[torch.arange(4), (cands * text[:, None]).sum(-1).argmax(1)]
    assert torch.allclose(kept, best)


def test_loss_falls_and_the_prediction_follows_the_text():
    """Image embeddings that are a fixed rotation of the text embedding: the prior learns the map."""
    torch.manual_seed(0)
    prior = tiny_prior(cond_drop_prob=0.1)
    rotation = torch.linalg.qr(torch.randn(16, 16))[0]
    opt = torch.optim.AdamW(prior.parameters(), lr=2e-3)
    losses, logs = [], {}
    for step in range(300):
        text, enc, pad = text_inputs(64, seed=step)
        image = text @ rotation
        loss, logs = prior(image, text, enc, pad)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) / 20 < 0.5 * sum(losses[:20]) / 20
    assert logs["cos_image"] > logs["cos_image_shuffled"] + 0.3
    prior.eval()
    text, enc, pad = text_inputs(32, seed=10_000)
    sampled = prior.sample(text, enc, pad, num_inference_steps=20, guidance_scale=2.0,
                           generator=torch.Generator().manual_seed(0))  # fmt: skip
    true = F.normalize(text @ rotation, dim=-1)
    assert (sampled * true).sum(-1).mean() > 0.6
    assert (sampled * true.roll(1, 0)).sum(-1).mean() < 0.3
