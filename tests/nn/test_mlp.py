import pytest
import torch
import torch.nn.functional as F
from torch import nn

from multimodal.nn import Mlp, SwiGLU

TOL = 1e-5


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_mlp_matches_formula() -> None:
    mlp = Mlp(8, 32)
    x = torch.randn(2, 3, 8)
    expected = F.gelu(x @ mlp.fc1.weight.T + mlp.fc1.bias) @ mlp.fc2.weight.T + mlp.fc2.bias
    torch.testing.assert_close(mlp(x), expected, atol=TOL, rtol=0)


def test_mlp_act_layer_and_no_bias() -> None:
    mlp = Mlp(8, 16, act_layer=nn.ReLU, bias=False)
    assert mlp.fc1.bias is None and mlp.fc2.bias is None
    x = torch.randn(4, 8)
    torch.testing.assert_close(mlp(x), torch.relu(x @ mlp.fc1.weight.T) @ mlp.fc2.weight.T, atol=TOL, rtol=0)


def test_mlp_loads_timm_weights_by_name() -> None:
    timm_layers = pytest.importorskip("timm.layers")
    theirs = timm_layers.Mlp(8, 24).eval()
    ours = Mlp(8, 24).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(ours(x), theirs(x), atol=TOL, rtol=0)


def test_swiglu_matches_formula() -> None:
    swiglu = SwiGLU(8, 12)
    assert swiglu.fc1.weight.shape == (24, 8) and swiglu.fc1.bias is None
    x = torch.randn(2, 3, 8)
    gate = x @ swiglu.fc1.weight[:12].T
    value = x @ swiglu.fc1.weight[12:].T
    expected = (F.silu(gate) * value) @ swiglu.fc2.weight.T
    torch.testing.assert_close(swiglu(x), expected, atol=TOL, rtol=0)


def test_dropout_only_in_training() -> None:
    mlp = Mlp(8, 32, drop=0.5)
    x = torch.randn(4, 8)
    mlp.eval()
    torch.testing.assert_close(mlp(x), mlp(x))
    mlp.train()
    assert not torch.allclose(mlp(x), mlp(x))


def test_bad_sizes_raise() -> None:
    with pytest.raises(ValueError, match="hidden_dim"):
        SwiGLU(8, 0)
