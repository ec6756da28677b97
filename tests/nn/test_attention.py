import math

import pytest
import torch
from torch import Tensor, nn

from multimodal.nn import Attention, attention

TOL = 1e-5


def reference_attention(
    attn: Attention,
    x: Tensor,
    context: Tensor | None = None,
    *,
    key_padding_mask: Tensor | None = None,
    attn_bias: Tensor | None = None,
    causal: bool = False,
) -> Tensor:
    """Naive float64 attention with explicit loops over batch, head and query; masked keys are skipped."""
    x = x.double()
    B, N, C = x.shape
    H, D = attn.heads, attn.head_dim
    if attn.cross:
        q = x @ attn.q.weight.double().T + attn.q.bias.double()
        kv = context.double() @ attn.kv.weight.double().T + attn.kv.bias.double()
        k, v = kv[..., :C], kv[..., C:]
    else:
        qkv = x @ attn.qkv.weight.double().T + attn.qkv.bias.double()
        q, k, v = qkv[..., :C], qkv[..., C : 2 * C], qkv[..., 2 * C :]
    M = k.shape[1]
    q, k, v = q.reshape(B, N, H, D), k.reshape(B, M, H, D), v.reshape(B, M, H, D)
    bias = torch.zeros(B, H, N, M, dtype=torch.float64)
    if attn_bias is not None:
        bias = bias + attn_bias.double()
    out = torch.zeros(B, N, H, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for i in range(N):
                visible = [
                    j
                    for j in range(M)
                    if not (key_padding_mask is not None and key_padding_mask[b, j]) and not (causal and j > i)
                ]
                if not visible:
                    continue  # fully masked row: zeros
                scores = torch.stack([q[b, i, h] @ k[b, j, h] / math.sqrt(D) + bias[b, h, i, j] for j in visible])
                weights = torch.exp(scores - scores.max())
                weights = weights / weights.sum()
                out[b, i, h] = sum(w * v[b, j, h] for w, j in zip(weights, visible, strict=True))
    out = out.reshape(B, N, C)
    return (out @ attn.proj.weight.double().T + attn.proj.bias.double()).float()


def padding_mask(lengths: list[int], total: int) -> Tensor:
    return torch.arange(total)[None, :] >= torch.tensor(lengths)[:, None]  # True at padding


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_self_attention_matches_reference() -> None:
    attn = Attention(16, heads=4).eval()
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(attn(x), reference_attention(attn, x), atol=TOL, rtol=0)


def test_cross_attention_different_lengths_and_context_dim() -> None:
    attn = Attention(16, heads=2, cross=True, context_dim=12).eval()
    assert attn.kv.weight.shape == (32, 12)
    x, context = torch.randn(2, 5, 16), torch.randn(2, 7, 12)
    torch.testing.assert_close(attn(x, context), reference_attention(attn, x, context), atol=TOL, rtol=0)


def test_causal_matches_reference() -> None:
    attn = Attention(16, heads=4).eval()
    x = torch.randn(2, 6, 16)
    torch.testing.assert_close(attn(x, causal=True), reference_attention(attn, x, causal=True), atol=TOL, rtol=0)


def test_key_padding_with_per_sample_lengths() -> None:
    attn = Attention(16, heads=4).eval()
    x = torch.randn(3, 6, 16)
    mask = padding_mask([6, 2, 4], 6)
    out = attn(x, key_padding_mask=mask)
    torch.testing.assert_close(out, reference_attention(attn, x, key_padding_mask=mask), atol=TOL, rtol=0)
    # padded keys have no influence: changing them leaves every query unchanged
    x2 = x.clone()
    x2[mask] = torch.randn(int(mask.sum()), 16)
    q_rows = ~mask
    torch.testing.assert_close(attn(x2, key_padding_mask=mask)[q_rows], out[q_rows], atol=TOL, rtol=0)


def test_cross_attention_key_padding() -> None:
    attn = Attention(8, heads=2, cross=True, context_dim=6).eval()
    x, context = torch.randn(2, 3, 8), torch.randn(2, 5, 6)
    mask = padding_mask([5, 1], 5)
    ref = reference_attention(attn, x, context, key_padding_mask=mask)
    torch.testing.assert_close(attn(x, context, key_padding_mask=mask), ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("bias_shape", [(2, 4, 5, 5), (4, 5, 5), (5, 5), (2, 1, 1, 5)])
def test_additive_bias_broadcasts(bias_shape: tuple[int, ...]) -> None:
    attn = Attention(16, heads=4).eval()
    x, bias = torch.randn(2, 5, 16), torch.randn(bias_shape)
    ref = reference_attention(attn, x, attn_bias=bias)
    torch.testing.assert_close(attn(x, attn_bias=bias), ref, atol=TOL, rtol=0)


def test_causal_padding_and_bias_combined() -> None:
    attn = Attention(16, heads=4).eval()
    x, bias = torch.randn(2, 6, 16), torch.randn(2, 4, 6, 6)
    mask = padding_mask([6, 3], 6)
    mask[0, 0] = True  # sample 0: query 0 sees only key 0, which is padding -> fully masked row
    out = attn(x, key_padding_mask=mask, attn_bias=bias, causal=True)
    ref = reference_attention(attn, x, key_padding_mask=mask, attn_bias=bias, causal=True)
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)


def test_fully_masked_row_is_finite_and_zero_before_projection() -> None:
    attn = Attention(8, heads=2)
    x = torch.randn(2, 4, 8, requires_grad=True)
    mask = padding_mask([4, 0], 4)  # sample 1: every key is padding
    out = attn(x, key_padding_mask=mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], attn.proj.bias.expand(4, 8).detach(), atol=TOL, rtol=0)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.isfinite(attn.qkv.weight.grad).all()
    # rows fully masked by an all -inf bias are handled the same way
    bias = torch.zeros(4, 4)
    bias[2] = float("-inf")
    out = attn(x.detach(), attn_bias=bias)
    torch.testing.assert_close(out[:, 2], attn.proj.bias.expand(2, 8).detach(), atol=TOL, rtol=0)


def test_matches_torch_multihead_attention_with_copied_weights() -> None:
    dim, heads = 16, 4
    ours = Attention(dim, heads=heads).eval()
    mha = nn.MultiheadAttention(dim, heads, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(ours.qkv.weight)
        mha.in_proj_bias.copy_(ours.qkv.bias)
        mha.out_proj.weight.copy_(ours.proj.weight)
        mha.out_proj.bias.copy_(ours.proj.bias)
    x = torch.randn(2, 6, dim)
    mask = padding_mask([6, 4], 6)
    causal = torch.ones(6, 6, dtype=torch.bool).triu(1)  # MHA: True = not allowed
    expected = mha(x, x, x, need_weights=False)[0]
    torch.testing.assert_close(ours(x), expected, atol=TOL, rtol=0)
    expected = mha(x, x, x, key_padding_mask=mask, attn_mask=causal, need_weights=False)[0]
    torch.testing.assert_close(ours(x, key_padding_mask=mask, causal=True), expected, atol=TOL, rtol=0)


def test_dropout_only_in_training() -> None:
    attn = Attention(16, heads=4, attn_drop=0.5)
    x = torch.randn(2, 5, 16)
    attn.eval()
    torch.testing.assert_close(attn(x), reference_attention(attn, x), atol=TOL, rtol=0)
    attn.train()
    assert not torch.allclose(attn(x), attn(x))


def test_without_qkv_bias() -> None:
    attn = Attention(16, heads=4, qkv_bias=False)
    assert attn.qkv.bias is None
    assert attn(torch.randn(1, 3, 16)).shape == (1, 3, 16)


@pytest.mark.parametrize(
    ("build", "call", "message"),
    [
        (lambda: Attention(10, heads=3), None, "divisible by heads"),
        (lambda: Attention(8, heads=2, context_dim=4), None, "cross=True"),
        (lambda: Attention(8, heads=2), lambda a: a(torch.randn(1, 3, 8), torch.randn(1, 3, 8)), "self-attention"),
        (lambda: Attention(8, heads=2), lambda a: a(torch.randn(1, 3, 6)), r"\(B, N, 8\)"),
        (lambda: Attention(8, heads=2, cross=True), lambda a: a(torch.randn(1, 3, 8)), "needs a context"),
        (
            lambda: Attention(8, heads=2, cross=True),
            lambda a: a(torch.randn(1, 3, 8), torch.randn(1, 3, 8), causal=True),
            "causal",
        ),
        (
            lambda: Attention(8, heads=2, cross=True, context_dim=4),
            lambda a: a(torch.randn(2, 3, 8), torch.randn(2, 5, 8)),
            "context",
        ),
        (
            lambda: Attention(8, heads=2),
            lambda a: a(torch.randn(2, 3, 8), key_padding_mask=torch.zeros(2, 4, dtype=torch.bool)),
            r"\(B, M\) = \(2, 3\)",
        ),
        (
            lambda: Attention(8, heads=2),
            lambda a: a(torch.randn(2, 3, 8), key_padding_mask=torch.zeros(2, 3)),
            "must be bool",
        ),
        (
            lambda: Attention(8, heads=2),
            lambda a: a(torch.randn(2, 3, 8), attn_bias=torch.zeros(3, 3, 3)),
            "broadcast",
        ),
        (
            lambda: Attention(8, heads=2),
            lambda a: a(torch.randn(2, 3, 8), attn_bias=torch.zeros(3, 3, dtype=torch.bool)),
            "float",
        ),
    ],
)
def test_bad_input_raises_value_error(build, call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        attn = build()
        call(attn)


@pytest.mark.parametrize("mask_kind", ["none", "causal", "additive", "bool"])
def test_composite_attention_equals_sdpa(mask_kind: str) -> None:
    """The explicit-matmul path (default on the CPU in bf16) equals the fused kernel: values and gradients."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    kwargs: dict = {"causal": mask_kind == "causal"}
    if mask_kind == "additive":
        kwargs["attn_mask"] = torch.randn(2, 1, 7, 7, dtype=torch.float64)
    if mask_kind == "bool":
        kwargs["attn_mask"] = torch.rand(2, 3, 7, 7) > 0.3
        kwargs["attn_mask"][..., 0] = True  # every query sees at least one key
    outs, grads = [], []
    for composite in (False, True):
        out = attention(q, k, v, composite=composite, **kwargs)
        outs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), (q, k, v)))
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-12)
    for a, b in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)


def test_cpu_bf16_attention_layer_uses_the_composite_path_and_stays_close_to_fp32() -> None:
    torch.manual_seed(0)
    attn = Attention(64, heads=4)
    x = torch.randn(4, 65, 64)
    ref = attn(x, causal=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = attn(x, causal=True)
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() < 0.03 * ref.abs().max()
    q, k, v = (torch.randn(2, 2, 9, 16).bfloat16() for _ in range(3))
    expected = attention(q, k, v, causal=True, composite=True)
    assert torch.equal(attention(q, k, v, causal=True), expected)  # the CPU bf16 default is the composite
