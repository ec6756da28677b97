import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from multimodal.nn import AAConv2d, aa_conv_channels


def naive_aa_conv(layer: AAConv2d, x: Tensor) -> Tensor:
    """The layer written out in float64: loops over heads and query positions, relative offsets indexed explicitly."""
    x = x.double()
    conv = F.conv2d(x, layer.conv.weight.double(), None, layer.conv.stride, layer.conv.padding)
    s = layer.stride
    if s > 1:  # average pool, ceil mode: partial windows average what they cover
        H, W = math.ceil(x.shape[2] / s), math.ceil(x.shape[3] / s)
        pooled = torch.zeros(x.shape[0], x.shape[1], H, W, dtype=torch.float64)
        for i, j in itertools.product(range(H), range(W)):
            pooled[:, :, i, j] = x[:, :, i * s : (i + 1) * s, j * s : (j + 1) * s].mean(dim=(2, 3))
        x = pooled
    B, _, H, W = x.shape
    qkv = F.conv2d(x, layer.qkv.weight.double(), layer.qkv.bias.double())  # (B, 2dk + dv, H, W)
    heads, dk, dv = layer.heads, layer.dk, layer.dv
    dkh, dvh = dk // heads, dv // heads
    out = torch.zeros(B, dv, H, W, dtype=torch.float64)
    mh, mw = layer.max_size
    for b, n in itertools.product(range(B), range(heads)):
        q = qkv[b, n * dkh : (n + 1) * dkh] * dkh**-0.5  # (dkh, H, W)
        k = qkv[b, dk + n * dkh : dk + (n + 1) * dkh]
        v = qkv[b, 2 * dk + n * dvh : 2 * dk + (n + 1) * dvh]  # (dvh, H, W)
        for i, j in itertools.product(range(H), range(W)):
            logits = torch.zeros(H, W, dtype=torch.float64)
            for i2, j2 in itertools.product(range(H), range(W)):
                r = layer.rel_h[i2 - i + mh - 1].double() + layer.rel_w[j2 - j + mw - 1].double()
                logits[i2, j2] = q[:, i, j] @ k[:, i2, j2] + q[:, i, j] @ r
            p = logits.flatten().softmax(0).reshape(H, W)
            out[b, n * dvh : (n + 1) * dvh, i, j] = (v * p).sum(dim=(1, 2))
    attn = F.conv2d(out, layer.attn_out.weight.double(), layer.attn_out.bias.double())
    return torch.cat([conv, attn], dim=1)


@pytest.mark.parametrize("stride, size", [(1, (5, 7)), (2, (9, 13)), (2, (8, 6))])
def test_matches_naive_reference_on_non_square_maps(stride: int, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    layer = AAConv2d(6, 16, 3, dk=8, dv=4, heads=2, stride=stride, max_size=8).double()
    x = torch.randn(2, 6, *size, dtype=torch.float64)
    out = layer(x)
    expected = naive_aa_conv(layer, x)
    assert out.shape == expected.shape == (2, 16, math.ceil(size[0] / stride), math.ceil(size[1] / stride))
    assert (out - expected).abs().max() < 1e-5


def test_positional_logits_depend_only_on_the_offset() -> None:
    torch.manual_seed(0)
    layer = AAConv2d(4, 16, dk=8, dv=4, heads=2, max_size=6)
    H, W = 4, 5
    q = torch.randn(1, 2, 1, 4).expand(1, 2, H * W, 4)  # the same query vector at every position
    logits = layer.relative_logits(q, H, W).reshape(2, H, W, H, W)
    by_offset: dict[tuple[int, int, int], float] = {}
    for n, i, j, i2, j2 in itertools.product(range(2), range(H), range(W), range(H), range(W)):
        key = (n, i2 - i, j2 - j)
        value = logits[n, i, j, i2, j2].item()
        by_offset.setdefault(key, value)
        assert value == pytest.approx(by_offset[key], abs=1e-6), key
    assert len({round(v, 4) for v in by_offset.values()}) > len(by_offset) * 0.9  # offsets are told apart


class ScrambledAAConv2d(AAConv2d):
    """The bug of the most used PyTorch implementation: heads merged back onto the map by a bare reshape."""

    def _to_map(self, out: Tensor, H: int, W: int) -> Tensor:
        return out.reshape(out.shape[0], self.dv, H, W)  # no permute: positions and channels mixed up


def _self_attending(layer: AAConv2d) -> AAConv2d:
    """Weights under which every query attends (almost) only to its own position: constant queries, zero keys,
    and relative embeddings that reward offset (0, 0)."""
    d = layer.dk // layer.heads
    u = torch.ones(d) / math.sqrt(d)
    with torch.no_grad():
        layer.qkv.weight[: 2 * layer.dk].zero_()
        layer.qkv.bias[: 2 * layer.dk].zero_()
        layer.qkv.bias[: layer.dk] = 40.0 * u.repeat(layer.heads)
        for table, m in ((layer.rel_h, layer.max_size[0]), (layer.rel_w, layer.max_size[1])):
            table.zero_()
            table[m - 1] = 40.0 * u
    return layer


@pytest.mark.parametrize("cls, keeps_layout", [(AAConv2d, True), (ScrambledAAConv2d, False)])
def test_attention_output_keeps_the_spatial_layout(cls: type[AAConv2d], keeps_layout: bool) -> None:
    torch.manual_seed(0)
    layer = _self_attending(cls(3, 16, dk=8, dv=8, heads=2, max_size=8))
    x = torch.randn(2, 3, 6, 8)
    attn = layer(x)[:, 16 - 8 :]  # (B, dv, H, W): the attention channels
    v = F.conv2d(x, layer.qkv.weight[2 * layer.dk :], layer.qkv.bias[2 * layer.dk :])  # values at each position
    expected = layer.attn_out(v)  # attending to itself, each position returns its own value
    assert torch.allclose(attn, expected, atol=1e-4) is keeps_layout


def test_trains_under_bf16_autocast_and_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    layer = AAConv2d(8, 32, dk=8, dv=8, heads=4, stride=2, max_size=8)
    x = torch.randn(2, 8, 15, 11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.shape == (2, 32, 8, 6)
    out.float().square().mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_without_relative_logits_is_content_only_attention() -> None:
    torch.manual_seed(0)
    layer = AAConv2d(4, 8, dk=4, dv=4, heads=2, relative=False)
    assert layer.rel_h is None and "relative=False" in repr(layer)
    assert layer(torch.randn(1, 4, 5, 3)).shape == (1, 8, 5, 3)


def test_paper_ratios() -> None:
    assert aa_conv_channels(256) == (48, 24)  # 0.2 * 256 = 51.2 -> 48, 0.1 * 256 = 25.6 -> 24 (multiples of 8)
    assert aa_conv_channels(64, heads=4) == (12, 8)
    with pytest.raises(ValueError, match="leaves no convolution channels"):
        aa_conv_channels(8, upsilon=0.99)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dk": 6, "dv": 4, "heads": 4}, "divisible by heads"),
        ({"dk": 8, "dv": 16}, "must be in \\(0, out_channels=16\\)"),
        ({"dk": 8, "dv": 8, "kernel_size": 2}, "kernel_size must be odd"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    args = {"heads": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        AAConv2d(4, 16, **args)


def test_map_larger_than_the_relative_tables_is_refused() -> None:
    layer = AAConv2d(4, 16, dk=8, dv=4, heads=2, max_size=(4, 8))
    assert layer(torch.randn(1, 4, 4, 8)).shape == (1, 16, 4, 8)
    with pytest.raises(ValueError, match="larger than the relative tables' max_size"):
        layer(torch.randn(1, 4, 5, 8))
    with pytest.raises(ValueError, match=r"expected a \(B, C, H, W\)"):
        layer(torch.randn(4, 5, 8))
