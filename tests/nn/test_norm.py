import pytest
import torch
from torch import nn

from multimodal.nn import RMSNorm, build_norm

TOL = 1e-5


def test_rmsnorm_matches_formula() -> None:
    torch.manual_seed(0)
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(8))
    x = torch.randn(2, 3, 8) * 3
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected, atol=TOL, rtol=0)


def test_rmsnorm_init_and_unit_rms() -> None:
    norm = RMSNorm(16)
    torch.testing.assert_close(norm.weight, torch.ones(16))
    y = norm(torch.randn(5, 16) * 10)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(5), atol=1e-4, rtol=0)


def test_rmsnorm_bfloat16_in_bfloat16_out() -> None:
    torch.manual_seed(0)
    norm = RMSNorm(8)
    x = torch.randn(4, 8).bfloat16()
    y = norm(x)
    assert y.dtype == torch.bfloat16
    x32 = x.float()
    expected = x32 / torch.sqrt((x32**2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(y.float(), expected.bfloat16().float(), atol=0, rtol=0)


def test_rmsnorm_wrong_dim_raises() -> None:
    with pytest.raises(ValueError, match="last dim 8"):
        RMSNorm(8)(torch.randn(2, 4))


def test_build_norm() -> None:
    layer = build_norm("layer", 8)
    assert isinstance(layer, nn.LayerNorm) and layer.eps == 1e-6
    assert build_norm("layer", 8, eps=1e-5).eps == 1e-5
    rms = build_norm("rms", 8, eps=1e-5)
    assert isinstance(rms, RMSNorm) and rms.eps == 1e-5
    with pytest.raises(ValueError, match="valid norms: layer, rms"):
        build_norm("batch", 8)
