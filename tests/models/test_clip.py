"""multimodal.models.clip: equal to open_clip on the same weights, lossless conversion both ways, logit scale,
end-of-text pooling, attention pooling, every registered CLIP builds, and nano trains. Offline throughout."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip

import multimodal
from multimodal.config import ConfigError
from multimodal.models import CLIP, AttentionPool, ClipConfig, VisionTransformer

TOL = 1e-5
OPEN_CLIP_NAMES = {"clip_vit_b32": "ViT-B-32", "clip_vit_b16": "ViT-B-16", "clip_vit_l14": "ViT-L-14"}


@pytest.fixture(autouse=True)
def _offline_and_seeded(offline: None) -> None:
    torch.manual_seed(0)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def assert_same_outputs(theirs: torch.nn.Module, ours: CLIP, images: torch.Tensor, tokens: torch.Tensor) -> None:
    with torch.no_grad():
        assert max_diff(ours.encode_image(images), theirs.encode_image(images)) < TOL
        assert max_diff(ours.encode_text(tokens), theirs.encode_text(tokens)) < TOL
        out, ref = ours(images, tokens), theirs(images, tokens)
    assert max_diff(out["image_features"], ref[0]) < TOL
    assert max_diff(out["text_features"], ref[1]) < TOL
    assert torch.equal(out["logit_scale"], ref[2])
    assert ("logit_bias" in out) == (len(ref) == 4)
    if len(ref) == 4:
        assert torch.equal(out["logit_bias"], ref[3])


def assert_round_trip(theirs: torch.nn.Module, ours: CLIP) -> None:
    exported, reference = ours.to_open_clip_state_dict(), theirs.state_dict()
    assert exported.keys() == reference.keys()
    for key, tensor in reference.items():
        assert exported[key].shape == tensor.shape, key
        assert torch.equal(exported[key], tensor), key


def test_vit_b32_matches_open_clip_and_round_trips() -> None:
    theirs = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    ours = CLIP.from_open_clip(theirs).eval()
    assert ours.cfg == ClipConfig.preset("vit-b32")
    images = torch.randn(2, 3, 224, 224)
    tokens = open_clip.tokenize(["a photo of a cat", "a diagram of a red circle above a blue square"])
    assert_same_outputs(theirs, ours, images, tokens)
    assert_round_trip(theirs, ours)


TINY_VARIANTS = {
    "quick_gelu": dict(vision={}, text={}, quick_gelu=True),
    "layer_scale_no_ln_pre_bias": dict(
        vision={"ls_init_value": 0.1, "no_ln_pre": True},
        text={"ls_init_value": 0.1, "proj_bias": True},
        init_logit_bias=-10.0,
    ),
    "avg_pool_ln_after": dict(vision={"pool_type": "avg", "final_ln_after_pool": True}, text={}),
}


@pytest.mark.parametrize("variant", TINY_VARIANTS)
def test_tiny_custom_open_clip_matches(variant: str) -> None:
    kw = dict(TINY_VARIANTS[variant])
    vision = dict(image_size=48, patch_size=12, width=96, layers=3, head_width=32, mlp_ratio=3.0, **kw.pop("vision"))
    text = dict(context_length=16, vocab_size=49408, width=64, heads=2, layers=2, **kw.pop("text"))
    theirs = open_clip.model.CLIP(80, vision, text, **kw).eval()
    with torch.no_grad():  # make layer scales, biases and the logit scale differ from their init values
        for p in theirs.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ours = CLIP.from_open_clip(theirs).eval()
    v, t = ours.cfg.vision, ours.cfg.text
    assert (v.img_size, v.patch_size, v.width, v.layers, v.heads, v.mlp_ratio) == (48, 12, 96, 3, 3, 3.0)
    assert (t.context_length, t.width, t.layers, t.heads, ours.cfg.embed_dim) == (16, 64, 2, 2, 80)
    assert (v.act, t.act) == (("quick_gelu",) * 2 if kw.get("quick_gelu") else ("gelu",) * 2)
    images = torch.randn(3, 3, 48, 48)
    tokens = open_clip.tokenize(["a", "a very long caption that will not fit into sixteen tokens at all", ""], 16)
    assert_same_outputs(theirs, ours, images, tokens)
    assert_round_trip(theirs, ours)
    from_state = CLIP.from_open_clip(theirs.state_dict(), config=ours.cfg)
    assert all(torch.equal(a, b) for a, b in zip(from_state.parameters(), ours.parameters(), strict=True))
    fresh = open_clip.model.CLIP(80, vision, text, **kw).eval()
    fresh.load_state_dict(ours.to_open_clip_state_dict(), strict=True)
    assert_same_outputs(fresh, ours, images, tokens)


def test_quick_gelu_from_a_state_dict_must_be_given() -> None:
    vision = dict(image_size=32, patch_size=16, width=64, layers=1)
    text = dict(context_length=8, width=64, heads=1, layers=1)
    theirs = open_clip.model.CLIP(32, vision, text, quick_gelu=True).eval()
    images, tokens = torch.randn(2, 3, 32, 32), open_clip.tokenize(["a cat", "a dog"], 8)
    guessed = CLIP.from_open_clip(theirs.state_dict()).eval()  # the activation leaves no trace in the weights
    assert guessed.cfg.vision.act == "gelu"
    with torch.no_grad():
        assert max_diff(guessed.encode_image(images), theirs.encode_image(images)) > 1e-4
    assert_same_outputs(theirs, CLIP.from_open_clip(theirs.state_dict(), quick_gelu=True).eval(), images, tokens)
    with pytest.raises(ValueError, match="quick_gelu=False but the open_clip image tower uses QuickGELU"):
        CLIP.from_open_clip(theirs, quick_gelu=False)


def test_from_open_clip_names_what_does_not_fit() -> None:
    resnet = open_clip.model.CLIP(64, dict(image_size=64, layers=(1, 1, 1, 1), width=16), dict(width=64, layers=1))
    with pytest.raises(ValueError, match=r"ResNet \(ModifiedResNet\) image tower .* only ViT CLIPs"):
        CLIP.from_open_clip(resnet)
    theirs = open_clip.model.CLIP(
        32, dict(image_size=32, patch_size=16, width=64, layers=1), dict(width=64, heads=1, layers=1)
    )
    state = theirs.state_dict()
    with pytest.raises(ValueError, match=r"unexpected keys visual\.extra, missing keys \[\]"):
        CLIP.from_open_clip({**state, "visual.extra": torch.zeros(1)})
    del state["transformer.resblocks.0.mlp.c_proj.bias"]
    with pytest.raises(ValueError, match=r"missing keys transformer\.resblocks\.0\.mlp\.c_proj\.bias"):
        CLIP.from_open_clip(state)
    with pytest.raises(ValueError, match="do not fit the given config"):
        CLIP.from_open_clip(theirs, config=CLIP.from_open_clip(theirs).cfg.replace(embed_dim=16))
    ddp = {f"module.{k}": v for k, v in theirs.state_dict().items()}
    assert CLIP.from_open_clip(ddp).cfg == CLIP.from_open_clip(theirs).cfg


def test_logit_scale_init_clamp_and_bias() -> None:
    model = multimodal.create_model("clip_nano")
    assert model.logit_scale.shape == () and model.logit_bias is None
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    images, tokens = torch.randn(2, 3, 32, 32), torch.randint(1, 49407, (2, 16))
    out = model(images, tokens)
    assert out.keys() == {"image_features", "text_features", "logit_scale"}
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07)
    torch.testing.assert_close(out["image_features"].norm(dim=-1), torch.ones(2))
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
    model.clamp_logit_scale_()
    assert model.logit_scale.item() == pytest.approx(math.log(100))
    with torch.no_grad():
        model.logit_scale.fill_(-1.0)
    model.clamp_logit_scale_()
    assert model.logit_scale.item() == 0.0 and model.logit_scale.requires_grad and model.logit_scale.is_leaf
    siglip = multimodal.create_model("clip_nano", init_logit_scale=math.log(10), init_logit_bias=-10)
    out = siglip(images, tokens)
    assert out["logit_scale"].item() == pytest.approx(10.0) and out["logit_bias"].item() == -10.0
    assert {"logit_scale", "logit_bias", "text.pos_embed", "visual.pos_embed"} <= siglip.no_weight_decay()
    logits, logits_t = siglip.get_logits(images, tokens)
    torch.testing.assert_close(logits, 10 * out["image_features"] @ out["text_features"].T - 10)
    torch.testing.assert_close(logits_t, logits.T)


def test_encode_text_pools_at_end_of_text() -> None:
    model = multimodal.create_model("clip_nano").eval()
    eot = 49407
    tokens = torch.zeros(3, 16, dtype=torch.long)
    tokens[:, 0] = 49406
    tokens[:, 1:5] = torch.randint(1, 49000, (3, 4))
    tokens[:, 5] = eot
    after = tokens.clone()
    after[:, 6:] = torch.randint(1, 49000, (3, 10))  # anything after eot is invisible to it
    before = tokens.clone()
    before[:, 2] = (before[:, 2] + 1) % 49000
    with torch.no_grad():
        ref = model.encode_text(tokens)
        assert max_diff(model.encode_text(after), ref) < TOL
        assert max_diff(model.encode_text(tokens[:, :6]), ref) < TOL  # shorter than the context: same features
        assert max_diff(model.encode_text(before), ref) > 1e-3
        features = model.text.forward_features(tokens)  # (B, L, width)
        torch.testing.assert_close(ref, model.text.proj(features[:, 5]))
    with pytest.raises(ValueError, match="17 tokens exceed the context length 16"):
        model.encode_text(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("name", multimodal.list_models("clip_*"))
def test_registered_models_build(name: str) -> None:
    with torch.device("meta"):
        ours = multimodal.create_model(name)
    assert isinstance(ours, CLIP) and ours.logit_scale.is_meta
    if name in OPEN_CLIP_NAMES:
        with torch.device("meta"):
            theirs = open_clip.model.CLIP(**open_clip.get_model_config(OPEN_CLIP_NAMES[name]))
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
        assert ours.to_open_clip_state_dict().keys() == theirs.state_dict().keys()


def test_nested_overrides_and_errors() -> None:
    model = multimodal.create_model("clip_nano", embed_dim=32, vision={"layers": 2}, text={"layers": 1})
    assert len(model.visual.transformer.blocks) == 2 and len(model.text.transformer.blocks) == 1
    assert model.cfg.vision.width == 128 and model.visual.head.out_features == 32
    with pytest.raises(ConfigError, match=r"did you mean 'vision\.layers'"):
        multimodal.create_model("clip_nano", vision={"layres": 2})
    with pytest.raises(ValueError, match=r"text.width \(128\) must be divisible by text.heads \(3\)"):
        multimodal.create_model("clip_nano", text={"heads": 3})
    for name in ("vit-b32", "vit-l14", "nano"):
        preset = ClipConfig.preset(name)
        assert ClipConfig.from_dict(yaml.safe_load(preset.to_yaml())) == preset
    assert model.cfg.override(["text.layers=3"]).text.layers == 3
    with pytest.raises(ConfigError, match=r"did you mean 'vit-b32'"):
        ClipConfig.preset("vit-b23")
    with pytest.raises(ValueError, match=r"conv.*no open_clip counterpart"):
        model.to_open_clip_state_dict()


def test_nano_trains_and_grad_checkpointing_agrees() -> None:
    model = multimodal.create_model("clip_nano", vision={"layers": 2}, text={"layers": 2})
    images, tokens = torch.randn(8, 3, 32, 32), torch.randint(1, 49407, (8, 16))
    labels = torch.arange(8)

    def loss_fn() -> torch.Tensor:
        out = model(images, tokens)
        logits = out["logit_scale"] * out["image_features"] @ out["text_features"].T
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    first = loss_fn()
    first.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["logit_scale"].abs().item() > 0 and grads["visual.head.weight"].abs().sum().item() > 0
    model.set_grad_checkpointing(True)
    model.zero_grad()
    torch.testing.assert_close(loss_fn(), first)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(10):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
        model.clamp_logit_scale_()
    assert loss_fn().item() < 0.5 * first.item()


def test_attention_pool_is_a_set_function_of_the_tokens() -> None:
    pool = AttentionPool(32, heads=4, queries=3)
    x = torch.randn(2, 10, 32)
    out = pool(x)
    assert out.shape == (2, 32)
    torch.testing.assert_close(pool(x[:, torch.randperm(10)]), out)  # order-free: positions come from the tokens
    assert max_diff(pool(torch.cat([x[:, :9], torch.randn(2, 1, 32)], dim=1)), out) > 1e-3
    q = pool.attn.q(pool.query).reshape(1, 3, 4, 8).transpose(1, 2)  # (1, H, Q, D)
    k, v = pool.attn.kv(x).reshape(2, 10, 2, 4, 8).permute(2, 0, 3, 1, 4)  # 2 x (B, H, N, D)
    weights = (q @ k.transpose(-1, -2) / math.sqrt(8)).softmax(dim=-1)  # (B, H, Q, N)
    attended = pool.attn.proj((weights @ v).transpose(1, 2).reshape(2, 3, 32))  # (B, Q, C)
    torch.testing.assert_close(out, F.layer_norm(attended.mean(dim=1), (32,), pool.norm.weight, pool.norm.bias, 1e-6))


def test_vit_attention_pooling_and_clip_with_it() -> None:
    vit = multimodal.create_model("vit_nano_patch4_32", pool="attn", depth=2, num_classes=0).eval()
    assert isinstance(vit, VisionTransformer) and "attn_pool.query" in vit.no_weight_decay()
    images = torch.randn(2, 3, 32, 32)
    shuffled = images.reshape(2, 3, 8, 4, 8, 4)[:, :, torch.randperm(8)].reshape(2, 3, 32, 32)  # move patches
    with torch.no_grad():
        tokens = vit.forward_features(images)
        out = vit(images)
        torch.testing.assert_close(out, vit.attn_pool(tokens))
        assert max_diff(vit(shuffled), out) > 1e-3  # the position embedding makes the image's layout matter
    with pytest.raises(ValueError, match="pool_queries=2 only applies with pool='attn'"):
        multimodal.create_model("vit_nano_patch4_32", pool_queries=2)
    clip = multimodal.create_model("clip_nano", vision={"pool": "attn", "pool_queries": 2})
    out = clip(images, torch.randint(1, 49407, (2, 16)))
    out["image_features"].sum().backward()
    assert clip.visual.attn_pool.query.grad.abs().sum().item() > 0


def test_timm_model_as_image_tower() -> None:
    clip = multimodal.create_model("clip_nano", vision={"timm_model": "resnet10t"})
    images = torch.randn(2, 3, 32, 32)
    features = clip.encode_image(images, normalize=True)
    assert features.shape == (2, 128)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(2))
    clip.set_grad_checkpointing(True)
    with pytest.raises(ValueError, match=r"timm_model.*no open_clip counterpart"):
        clip.to_open_clip_state_dict()
    with pytest.raises(ValueError, match="not a timm model"):
        multimodal.create_model("clip_nano", vision={"timm_model": "resnet10x"})


def test_registry_model_as_image_tower_trains() -> None:
    torch.manual_seed(0)
    tower = {"channels": [8, 16, 32, 64], "stem": "small", "small_stem_stride": 2, "img_size": 32, "heads": 2}
    clip = multimodal.create_model("clip_nano", vision={"model": "aa_resnet18", "model_kwargs": tower})
    assert type(clip.visual).__name__ == "AAResNet" and clip.visual.fc.out_features == 128
    images, tokens = torch.randn(8, 3, 32, 32), torch.randint(1, 49407, (8, 16))
    tokens[:, 5] = 49407
    opt = torch.optim.AdamW(clip.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        out = clip(images, tokens)
        logits = out["logit_scale"] * out["image_features"] @ out["text_features"].T
        labels = torch.arange(8)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match="not both"):
        multimodal.create_model("clip_nano", vision={"model": "resnet18", "timm_model": "resnet10t"})
    with pytest.raises(ValueError, match="model_kwargs only apply"):
        multimodal.create_model("clip_nano", vision={"model_kwargs": {"stem": "small"}})
    with pytest.raises(ValueError, match=r"vision\.model\b.*no open_clip counterpart"):
        clip.to_open_clip_state_dict()
