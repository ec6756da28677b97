"""Per-head weights rebuild the attention forward pass; factored matrices agree with their products; composition
and copying scores agree with brute force and with planted circuits."""

from __future__ import annotations

import pytest
import torch

from multimodal.circuits import (
    FactoredMatrix,
    composition_baseline,
    composition_scores,
    copying_scores,
    head_weights,
)
from multimodal.nn import Transformer, run_with_cache


def model(norm: str = "layer") -> Transformer:
    torch.manual_seed(0)
    m = Transformer(24, 3, heads=4, norm=norm).eval()
    with torch.no_grad():  # non-trivial norm scales and shifts, so folding them matters
        for block in m.blocks:
            block.norm1.weight.uniform_(0.5, 1.5)
            if getattr(block.norm1, "bias", None) is not None:
                block.norm1.bias.normal_(0, 0.3)
    return m


@pytest.mark.parametrize("norm", ["layer", "rms"])
@pytest.mark.parametrize("fold", [True, False])
def test_per_head_weights_rebuild_every_blocks_attention(norm: str, fold: bool) -> None:
    m, x = model(norm), torch.randn(2, 6, 24)
    w = head_weights(m, fold_norm=fold)
    assert w.W_Q.shape == (3, 4, 24, 6) and w.W_O.shape == (3, 4, 6, 24) and w.b_O.shape == (3, 24)
    _, cache = run_with_cache(m, x, causal=True)
    for layer, block in enumerate(m.blocks):
        resid = cache[f"blocks.{layer}.hook_resid_pre"]  # (B, N, C)
        if fold:  # the heads read the normalised stream, without the norm's own scale and shift
            eps = block.norm1.eps
            if norm == "layer":
                stream = (resid - resid.mean(-1, keepdim=True)) / (
                    resid.var(-1, unbiased=False, keepdim=True) + eps
                ).sqrt()
            else:
                stream = resid / (resid.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        else:
            stream = block.norm1(resid)
        q, k, v = (torch.einsum("bnc,hcd->bnhd", stream, W[layer]) + b[layer] for W, b in (
            (w.W_Q, w.b_Q), (w.W_K, w.b_K), (w.W_V, w.b_V)))  # fmt: skip
        torch.testing.assert_close(q, cache[f"blocks.{layer}.attn.hook_q"], rtol=1e-4, atol=1e-5)
        scores = torch.einsum("bnhd,bmhd->bhnm", q, k) / 6**0.5
        pattern = scores.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        z = torch.einsum("bhnm,bmhd->bnhd", pattern, v)
        out = torch.einsum("bnhd,hdc->bnc", z, w.W_O[layer]) + w.b_O[layer]
        torch.testing.assert_close(out, cache[f"blocks.{layer}.hook_attn_out"], rtol=1e-4, atol=1e-5)


def test_a_transformer_must_be_named_when_a_model_holds_two() -> None:
    pair = torch.nn.ModuleDict({"a": model(), "b": model()})
    with pytest.raises(ValueError, match="holds 2 backbone Transformers; pass the one to read"):
        head_weights(pair)
    assert head_weights(torch.nn.ModuleDict({"a": model()})).layers == 3


def test_factored_matrix_agrees_with_its_product() -> None:
    torch.manual_seed(1)
    A, B, M = torch.randn(2, 3, 10, 4), torch.randn(2, 3, 4, 10), torch.randn(10, 7)
    f = FactoredMatrix(A, B)
    assert f.shape == (2, 3, 10, 10) and f.T.shape == (2, 3, 10, 10)
    torch.testing.assert_close(f.norm(), f.AB.norm(dim=(-2, -1)))
    torch.testing.assert_close((f @ M).AB, f.AB @ M)
    torch.testing.assert_close((M.T @ f).AB, M.T @ f.AB)
    torch.testing.assert_close((f @ f.T).AB, f.AB @ f.AB.transpose(-2, -1), rtol=1e-4, atol=1e-4)
    # The 4 nonzero eigenvalues of the rank-4 (10 x 10) product, by magnitude.
    ours = f.eigenvalues().abs().sort(-1).values
    full = torch.linalg.eigvals(f.AB.double()).abs().sort(-1).values[..., -4:]
    torch.testing.assert_close(ours, full, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match=r"factors must be \(\.\.\., m, k\) and \(\.\.\., k, n\)"):
        FactoredMatrix(A, M)


@pytest.mark.parametrize("mode", ["q", "k", "v"])
def test_composition_scores_are_the_normalised_frobenius_norms(mode: str) -> None:
    w = head_weights(model())
    scores = composition_scores(w, mode)  # (L, H, L, H)
    ov, qk = w.OV.AB, w.QK.AB  # (L, H, C, C)
    later = {"q": qk, "k": qk.transpose(-2, -1), "v": ov}[mode]
    for l1, h1, l2, h2 in [(0, 1, 1, 2), (0, 3, 2, 0), (1, 0, 2, 3)]:
        product = ov[l1, h1] @ later[l2, h2]
        expected = product.norm() / (ov[l1, h1].norm() * later[l2, h2].norm())
        torch.testing.assert_close(scores[l1, h1, l2, h2], expected, rtol=1e-4, atol=1e-6)
    assert scores[1, 0, 0, 0].isnan() and scores[1, 2, 1, 3].isnan()  # only later layers read earlier heads
    assert ((scores[~scores.isnan()] >= 0) & (scores[~scores.isnan()] <= 1)).all()


def test_a_planted_k_composition_stands_far_above_the_random_baseline() -> None:
    m = model()
    with torch.no_grad():  # layer 1 head 0's keys read exactly the subspace layer 0 head 2 writes to
        attn0, attn1 = m.blocks[0].attn, m.blocks[1].attn
        writes = attn0.proj.weight[:, 12:18]  # (C, D): head 2's output directions
        attn1.qkv.weight[24:30] = writes.T  # head 0's W_K rows: (D, C)
    w = head_weights(m, fold_norm=False)
    scores = composition_scores(w, "k")
    chance = composition_baseline(24, 6)
    assert chance.shape == (500,) and 0 < chance.mean() < 0.5 and torch.equal(chance, chance.sort().values)
    assert scores[0, 2, 1, 0] > chance.mean() + 4 * chance.std() and scores[0, 2, 1, 0] > chance[-1]
    assert scores[0, 2, 1, 0] == scores[0, :, 1, :].max()


def test_copying_scores_are_plus_one_for_a_copying_head_and_minus_one_for_a_suppressing_one() -> None:
    m = model()
    with torch.no_grad():
        for block in m.blocks:
            block.attn.qkv.weight[48:].zero_()  # every W_V zero, then two planted heads
        basis = torch.linalg.qr(torch.randn(24, 6)).Q  # (C, D) orthonormal
        m.blocks[0].attn.qkv.weight[48 + 0 : 48 + 6] = basis.T  # head 0: v = x @ basis
        m.blocks[0].attn.proj.weight[:, 0:6] = basis  # and writes it back: OV = basis basis^T, a projection
        m.blocks[1].attn.qkv.weight[48 + 6 : 48 + 12] = basis.T  # layer 1 head 1: the same, negated
        m.blocks[1].attn.proj.weight[:, 6:12] = -basis
    w = head_weights(m, fold_norm=False)
    W_E = torch.randn(30, 24)  # 30 tokens
    scores = copying_scores(w, W_E, W_E.T)  # W_U = W_E^T: the full OV circuit W_E P W_E^T is positive semidefinite
    torch.testing.assert_close(scores[0, 0], torch.tensor(1.0))
    torch.testing.assert_close(scores[1, 1], torch.tensor(-1.0))
