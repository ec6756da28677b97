"""multimodal.models.vit: every registered model builds; outputs equal timm's ViT on the same weights."""

from __future__ import annotations

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
