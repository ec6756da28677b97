"""multimodal.models.vit: every registered model builds; outputs equal timm's ViT on the same weights."""

from __future__ import annotations

import re

import pytest
import timm
import torch

import multimodal
from multimodal.config import ConfigError
from multimodal.models import VisionTransformer

VIT_NAMES = multimodal.list_models("vit_*")


@pytest.mark.parametrize("name", VIT_NAMES)
def test_registered_models_build_and_match_timm_parameter_counts(name):
    with torch.device("meta"):
        ours = multimodal.create_model(name)
    assert isinstance(ours, VisionTransformer)
    if timm.is_model(name):
        with torch.device("meta"):
            theirs = timm.create_model(name, pretrained=False)
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


@pytest.mark.parametrize("pool", ["token", "mean"])
def test_forward_equals_timm_with_copied_weights(pool):
    torch.manual_seed(0)
    kw = dict(img_size=32, patch_size=4, num_classes=7, depth=2)
    theirs = timm.models.vision_transformer.VisionTransformer(
        embed_dim=48, num_heads=3, global_pool="avg" if pool == "mean" else "token",
        class_token=pool == "token", **kw,
    ).eval()  # fmt: skip
    ours = multimodal.create_model(
        "vit_nano_patch4_32", dim=48, heads=3, mlp_ratio=4.0, pool=pool, class_token=pool == "token", **kw
    ).eval()
    state = {
        k.replace("blocks.", "transformer.blocks.", 1).replace("fc_norm.", "norm.", 1): v
        for k, v in theirs.state_dict().items()
    }
    ours.load_state_dict(state, strict=True)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() < 1e-5
        assert (ours.forward_features(x) - theirs.forward_features(x)).abs().max().item() < 1e-5


def test_overrides_are_checked():
    with pytest.raises(ConfigError, match="did you mean 'depth'"):
        multimodal.create_model("vit_nano_patch4_32", deptth=3)
    with pytest.raises(ConfigError, match="unknown model 'vit_nano_patch4_23'; did you mean 'vit_nano_patch4_32'"):
        multimodal.create_model("vit_nano_patch4_23")
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        multimodal.create_model("vit_nano_patch4_32", img_size=30)


def test_heads_pooling_and_grad_checkpointing_agree():
    torch.manual_seed(0)
    model = multimodal.create_model("vit_nano_patch4_32", num_classes=5, depth=2, dim=32, heads=2)
    torch.nn.init.normal_(model.head.weight)
    x = torch.randn(2, 3, 32, 32)
    tokens = model.forward_features(x)
    assert tokens.shape == (2, 1 + 64, 32)
    assert torch.equal(model.forward_head(tokens, pre_logits=True), tokens[:, 0])
    model.train()
    out = model(x)
    model.set_grad_checkpointing(True)
    torch.testing.assert_close(model(x), out)


def _timm_vs_ours(theirs, ours, size: int) -> float:
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        return (ours.eval()(x) - theirs.eval()(x)).abs().max().item()


def test_from_timm_vit_tiny_same_logits_and_exact_round_trip():
    torch.manual_seed(0)
    theirs = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10)
    ours = VisionTransformer.from_timm(theirs)
    assert ours.cfg.heads == 3 and ours.cfg.depth == 12 and ours.cfg.dim == 192
    assert _timm_vs_ours(theirs, ours, 224) < 1e-5
    from_state = VisionTransformer.from_timm(theirs.state_dict())  # heads = 192 // 64 = 3, inferred from shapes
    assert from_state.cfg == ours.cfg
    back = ours.to_timm_state_dict()
    assert back.keys() == theirs.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in theirs.state_dict().items())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"global_pool": "avg", "class_token": False},  # fc_norm after average pooling
        {"global_pool": "avg", "init_values": 0.1, "pre_norm": True},  # layer scale, norm_pre
        {"act_layer": "quick_gelu", "qkv_bias": False, "num_classes": 0},
    ],
)
def test_from_timm_custom_layouts(kwargs):
    torch.manual_seed(0)
    theirs = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=3.0, **{"num_classes": 5, **kwargs}
    )
    ours = VisionTransformer.from_timm(theirs)
    assert _timm_vs_ours(theirs, ours, 32) < 1e-5
    again = VisionTransformer.from_timm(ours.to_timm_state_dict(), heads=2, act=ours.cfg.act)
    assert again.cfg.pool == ours.cfg.pool and _timm_vs_ours(theirs, again, 32) < 1e-5
    theirs.load_state_dict(ours.to_timm_state_dict(), strict=True)


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"reg_tokens": 2}, "register tokens"),
        ({"global_pool": "map"}, "global_pool='map'"),
        ({"qk_norm": True}, "qk_norm"),
    ],
)
def test_from_timm_refuses_what_it_cannot_hold(kwargs, reason):
    theirs = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=2, **kwargs
    )
    with pytest.raises(ValueError, match=re.escape(reason)):
        VisionTransformer.from_timm(theirs)
    with pytest.raises(ValueError, match="contradicts"):
        VisionTransformer.from_timm(timm.create_model("vit_tiny_patch16_224", pretrained=False), heads=4)
    with pytest.raises(ValueError, match="no equivalent of stem='conv'"):
        multimodal.create_model("vitc_nano_patch8_32").to_timm_state_dict()
