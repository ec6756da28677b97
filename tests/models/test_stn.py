import pytest
import torch

from multimodal import create_model
from multimodal.models import CLIP, SpatialTransformerNet
from multimodal.nn import SpatialTransformer

RESNET = {"channels": [8, 16, 32, 64], "stem": "small", "small_stem_stride": 2, "img_size": 32, "num_classes": 10}


def test_an_untrained_stn_is_its_backbone():
    torch.manual_seed(0)
    net = create_model("stn", model="resnet18", **RESNET).eval()
    assert isinstance(net, SpatialTransformerNet) and isinstance(net.st, SpatialTransformer)
    plain = create_model("resnet18", **RESNET).eval()
    plain.load_state_dict(net.backbone.state_dict())
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(net(x), plain(x), atol=1e-5, rtol=1e-5)
    assert net.get_classifier() is net.backbone.get_classifier()
    extra = sum(p.numel() for p in net.st.parameters())
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in plain.parameters()) + extra
    assert extra < 10_000  # the localisation net: small beside the model behind it


def test_the_loss_teaches_the_transformer():
    torch.manual_seed(0)
    net = create_model("stn", model="vitc_nano_patch8_32", dim=32, depth=1, heads=2, num_classes=4, st={"hidden": 16})
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,))
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    assert all(p.grad.abs().sum() > 0 for p in net.st.localisation.parameters())
    assert not torch.allclose(net.st.last_theta, torch.tensor([[1.0, 0, 0], [0, 1, 0]]).expand(8, 2, 3))


def test_a_clip_image_tower_behind_a_spatial_transformer():
    clip = create_model(
        "clip_nano",
        embed_dim=32,
        vision={
            "img_size": 32,
            "model": "stn",
            "model_kwargs": {"model": "vitc_nano_patch8_32", "dim": 32, "depth": 1, "heads": 2},
        },
        text={"width": 32, "layers": 1, "heads": 2, "context_length": 8},
    )
    assert isinstance(clip, CLIP) and isinstance(clip.visual, SpatialTransformerNet)
    assert clip.encode_image(torch.randn(2, 3, 32, 32)).shape == (2, 32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "stn"}, "not another stn"),
        ({"model": "resnet_18"}, "did you mean 'resnet18'"),
        ({"model": "resnet18", "st": {"width": 3}}, "channels, hidden and padding_mode"),
    ],
)
def test_bad_arguments_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model("stn", **kwargs)
