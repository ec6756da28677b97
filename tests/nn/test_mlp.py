import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multimodal.nn import Mlp, SwiGLU
from multimodal.nn.mlp import get_act_layer

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


def _mlp_grads(mlp: nn.Module, x: Tensor, *, recompute: bool, autocast: bool = False) -> list[Tensor]:
    """Output and gradients (input, fc1, fc2) of ``mlp`` on ``x``, with or without recomputing the activation."""
    x = x.detach().requires_grad_(True)
    mlp.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        plain = lambda x: mlp.drop2(mlp.fc2(mlp.drop1(mlp.act(mlp.fc1(x)))))  # noqa: E731 (what autograd would build)
        out = mlp(x) if recompute else plain(x)
    out.float().square().sum().backward()
    return [out, x.grad, mlp.fc1.weight.grad, mlp.fc1.bias.grad, mlp.fc2.weight.grad, mlp.fc2.bias.grad]


@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_recomputed_activation_gives_the_same_outputs_and_gradients(act: str) -> None:
    torch.manual_seed(0)
    mlp = Mlp(16, 48, act_layer=get_act_layer(act)).double()
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    for got, want in zip(_mlp_grads(mlp, x, recompute=True), _mlp_grads(mlp, x, recompute=False), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_recomputed_activation_under_bf16_autocast_matches_and_stores_less() -> None:
    torch.manual_seed(0)
    mlp = Mlp(64, 256)
    x = torch.randn(4, 33, 64)
    for got, want in zip(
        _mlp_grads(mlp, x, recompute=True, autocast=True),
        _mlp_grads(mlp, x, recompute=False, autocast=True),
        strict=True,
    ):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2 * want.abs().max().item())

    def saved_bytes(fn) -> int:
        storages: dict[int, int] = {}

        def pack(t: Tensor) -> Tensor:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
            fn(x.requires_grad_(True))
        return sum(storages.values())

    hidden_bytes = 4 * 33 * 256 * 2  # one bf16 (B, N, hidden) tensor
    plain = saved_bytes(lambda x: mlp.fc2(mlp.act(mlp.fc1(x))))
    assert plain - saved_bytes(mlp) == hidden_bytes


def test_dropout_between_act_and_fc2_keeps_the_plain_path() -> None:
    torch.manual_seed(0)
    mlp = Mlp(8, 16, drop=0.5).train()
    x = torch.randn(2, 8)
    torch.manual_seed(1)
    out = mlp(x)
    torch.manual_seed(1)
    assert torch.equal(out, mlp.drop2(mlp.fc2(mlp.drop1(mlp.act(mlp.fc1(x))))))
