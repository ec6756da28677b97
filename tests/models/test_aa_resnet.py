"""multimodal.models.aa_resnet: the plain twin is timm's ResNet; the augmented one swaps exactly the paper's convs."""

from __future__ import annotations

import pytest
import timm
import torch

import multimodal
from multimodal.config import ConfigError
from multimodal.models import AAResNet
from multimodal.nn import AAConv2d

NAMES = multimodal.list_models("*resnet*")
SMALL = dict(channels=(16, 32, 64, 128), heads=2, img_size=32, stem="small", num_classes=5)


@pytest.mark.parametrize("name", NAMES)
def test_registered_models_build(name):
    with torch.device("meta"):
        model = multimodal.create_model(name)
    assert isinstance(model, AAResNet)
    augmented = [n for n, m in model.named_modules() if isinstance(m, AAConv2d)]
    if name.startswith("aa_"):
        assert augmented and all(n.startswith(("layer2.", "layer3.", "layer4.")) for n in augmented)
        assert len(augmented) == sum(model.cfg.layers[1:])  # one per block of stages 2-4
    else:
        assert not augmented
        with torch.device("meta"):
            theirs = timm.create_model(name, pretrained=False)
        assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in theirs.parameters())


@pytest.mark.parametrize("name", ["resnet18", "resnet26"])
def test_plain_twin_equals_timm_with_its_weights(name):
    torch.manual_seed(0)
    theirs = timm.create_model(name, pretrained=False, num_classes=7).eval()
    ours = multimodal.create_model(name, num_classes=7).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() < 1e-5


def test_augmented_convs_keep_channels_and_strides():
    model = multimodal.create_model("aa_resnet26", **SMALL)
    conv = model.layer3[0].conv2  # bottleneck 3x3 carrying the stage's stride
    assert isinstance(conv, AAConv2d) and conv.stride == 2
    # bottleneck width 64: dk = 0.2 * 64 = 12.8 -> 12 and dv = 6.4 -> 6 (multiples of the 2 heads)
    assert conv.conv.out_channels + conv.dv == 64 and (conv.dk, conv.dv) == (12, 6)
    assert conv.max_size == (8, 8)  # 32 px, small stem: stage 3 maps are 8 x 8
    assert isinstance(model.layer1[0].conv2, torch.nn.Conv2d) and not isinstance(model.layer1[0].conv2, AAConv2d)
    assert {"layer2.0.conv2.rel_h", "layer4.1.conv2.rel_w"} <= model.no_weight_decay()
    x = torch.randn(3, 3, 32, 24)  # non-square input
    assert model(x).shape == (3, 5)
    with pytest.raises(ValueError, match="larger than the relative tables' max_size"):
        model(torch.randn(1, 3, 48, 48))


def test_aa_resnet_fits_a_batch():
    torch.manual_seed(0)
    model = multimodal.create_model("aa_resnet18", **SMALL)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 5, (16,))
    rel_before = model.layer2[0].conv1.rel_h.detach().clone()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    assert (model.layer2[0].conv1.rel_h - rel_before).abs().max() > 1e-3  # the relative tables train too


def test_bad_configs():
    with pytest.raises(ValueError, match="aa_stages \\[5\\] out of range"):
        multimodal.create_model("resnet18", aa_stages=(5,))
    with pytest.raises(ValueError, match="one entry per stage"):
        multimodal.create_model("resnet18", channels=(64, 128))
    with pytest.raises(ConfigError):
        multimodal.create_model("aa_resnet18", kapa=0.3)
