"""Our circuits tools against TransformerLens on the same weights: logits, every hook point both have, its own norm
folding, composition and copying scores, and its head detector."""

from __future__ import annotations

import pytest
import torch

from multimodal.circuits import (
    composition_scores,
    copying_scores,
    duplicate_token_scores,
    head_weights,
    induction_scores,
    previous_token_scores,
    to_hooked_transformer,
    transformer_lens_name,
)
from multimodal.models.lm import TransformerLM, TransformerLMConfig
from multimodal.nn import Transformer, run_with_cache

pytestmark = pytest.mark.transformer_lens  # `make test` runs these with .venv/transformer-lens/bin/python


@pytest.fixture(autouse=True)
def _needs_transformer_lens() -> None:
    """Skipped where transformer-lens is missing; in the main test run they are deselected, not skipped."""
    pytest.importorskip("transformer_lens")


def lm(**overrides) -> TransformerLM:
    """A TransformerLM with every weight, norm scale and bias away from its initial value."""
    torch.manual_seed(0)
    model = TransformerLM(TransformerLMConfig(vocab_size=50, context_length=48, dim=32, **overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


CASES = [
    {"depth": 0},
    {"depth": 2},
    {"depth": 2, "norm": "layer"},
    {"depth": 2, "norm": "rms"},
    {"depth": 2, "norm": "layer", "mlp": "gelu"},
    {"depth": 2, "norm": "rms", "mlp": "swiglu"},
]


@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_logits_and_every_shared_hook_point_agree(case: dict, fold: bool) -> None:
    model = lm(**case)
    hooked = to_hooked_transformer(model, fold_norm=fold, use_attn_result=True)
    tokens = torch.randint(0, 50, (3, 40))
    ours, cache = run_with_cache(model, tokens)
    theirs, their_cache = hooked.run_with_cache(tokens)
    assert (ours - theirs).abs().max() <= 1e-4
    shared = [name for name in cache if transformer_lens_name(name) in their_cache]
    for name in shared:  # attention scores hold -inf above the diagonal in both
        torch.testing.assert_close(cache[name], their_cache[transformer_lens_name(name)], rtol=1e-4, atol=1e-4)
    expected = {"hook_embed", "hook_pos_embed"}
    for i in range(case["depth"]):
        expected |= {f"transformer.blocks.{i}.hook_{n}" for n in ("resid_pre", "attn_out", "resid_post")}
        expected |= {f"transformer.blocks.{i}.attn.hook_{n}" for n in ("q", "k", "v", "attn_scores", "pattern")}
        expected |= {f"transformer.blocks.{i}.attn.hook_{n}" for n in ("z", "result")}
        if case.get("norm", "none") != "none":
            expected |= {f"transformer.blocks.{i}.norm1.hook_{n}" for n in ("scale", "normalized")}
        if case.get("mlp") in ("gelu", "swiglu"):
            expected |= {f"transformer.blocks.{i}.mlp.hook_{n}" for n in ("pre", "post")}
            expected |= {f"transformer.blocks.{i}.hook_{n}" for n in ("resid_mid", "mlp_out")}
        if case.get("mlp") == "swiglu":
            expected.add(f"transformer.blocks.{i}.mlp.hook_pre_linear")
    assert expected <= set(shared), sorted(expected - set(shared))


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_our_norm_folding_is_transformer_lens_fold_ln(norm: str) -> None:
    """TransformerLens folds (and centres) through load_and_process_state_dict; its per-head matrices are ours
    folded, centred over d_model for LayerNorm (whose output has zero mean), and the logits agree."""
    model = lm(depth=2, norm=norm, mlp="gelu")
    theirs = to_hooked_transformer(model)  # unfolded, then TransformerLens's own processing
    state = {k: v.clone() for k, v in theirs.state_dict().items()}
    theirs.load_and_process_state_dict(
        state, fold_ln=True, center_writing_weights=False, center_unembed=False, fold_value_biases=False
    )
    ours = head_weights(model, fold_norm=True)
    for key in ("W_Q", "W_K", "W_V"):
        expected = getattr(ours, key)
        if norm == "layer":
            expected = expected - expected.mean(dim=2, keepdim=True)  # (L, H, C, D): centred over C
        torch.testing.assert_close(getattr(theirs, key), expected, rtol=1e-5, atol=1e-5)
    for key in ("b_Q", "b_K", "b_V"):
        torch.testing.assert_close(getattr(theirs, key), getattr(ours, key), rtol=1e-5, atol=1e-5)
    tokens = torch.randint(0, 50, (2, 30))
    assert (theirs(tokens) - model(tokens)).abs().max() <= 1e-4


@pytest.mark.parametrize("norm", ["none", "layer"])
def test_composition_and_copying_scores_are_transformer_lens_scores(norm: str) -> None:
    model = lm(depth=3, norm=norm)
    hooked = to_hooked_transformer(model, fold_norm=True)
    ours = head_weights(model, fold_norm=True)
    for mode in ("q", "k", "v"):
        mine = composition_scores(ours, mode)  # NaN where the later head is not in a later layer
        theirs = hooked.all_composition_scores(mode.upper())  # zero there
        later = ~mine.isnan()
        assert later.sum() == 3 * 4 * 4  # (0->1, 0->2, 1->2) x 4 x 4 heads
        torch.testing.assert_close(mine[later], theirs[later], rtol=1e-5, atol=1e-6)
        assert torch.equal(theirs[~later], torch.zeros_like(theirs[~later]))
    # The eigenvalue copying score as TransformerLens's documentation computes it, with its FactoredMatrix, on the
    # token embeddings as the heads read them (through layer 0's norm, whose scale is folded into W_V).
    W_E = model.W_E.detach()
    if norm == "layer":
        W_E = (W_E - W_E.mean(-1, keepdim=True)) / (W_E.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    eig = (W_E @ hooked.OV @ hooked.W_U).eigenvalues  # (L, H, D) of the (V, V) full OV circuits
    expected = (eig.sum(-1) / eig.abs().sum(-1)).real
    torch.testing.assert_close(copying_scores(ours, W_E, hooked.W_U), expected.float(), rtol=1e-4, atol=1e-4)


def test_head_scores_are_transformer_lens_head_detector_scores(monkeypatch) -> None:
    """TransformerLens's detect_head divides the attention on its detection pattern by all attention (every query
    row); ours averages over the queries that have such a key. On BOS + p distinct ids said twice (N = 2p + 1
    tokens) the previous-token detector has N - 1 such rows and the duplicate and induction detectors p, so
    theirs = ours * rows / N exactly."""
    from transformer_lens.head_detector import detect_head

    model = lm(depth=2, norm="layer")
    hooked = to_hooked_transformer(model)
    p, gen = 20, torch.Generator().manual_seed(0)
    sequences = [torch.randperm(49, generator=gen)[:p] + 1 for _ in range(4)]  # distinct ids 1..49
    tokens = torch.stack([torch.cat([torch.tensor([0]), s, s]) for s in sequences])  # (4, 41)
    N = tokens.shape[1]
    patterns = run_with_cache(model, tokens)[1].stack("attn.hook_pattern")  # (L, B, H, N, N)
    ours = {
        "previous_token_head": previous_token_scores(patterns) * (N - 1) / N,
        "duplicate_token_head": duplicate_token_scores(patterns, p, prefix=1) * p / N,
        "induction_head": induction_scores(patterns, p, prefix=1) * p / N,
    }
    for name, mine in ours.items():
        theirs = []
        for row in tokens:  # detect_head tokenizes a string; hand it the ids instead
            monkeypatch.setattr(hooked, "to_tokens", lambda seq, row=row, **kwargs: row[None])
            theirs.append(detect_head(hooked, "ids", name))
        torch.testing.assert_close(mine, torch.stack(theirs).mean(0), rtol=1e-5, atol=1e-6)


def test_what_hooked_transformer_cannot_hold_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="converts a TransformerLM, got Transformer"):
        to_hooked_transformer(Transformer(16, 1, heads=2))
    model = lm(depth=1, norm="layer", mlp="swiglu")
    with pytest.raises(ValueError, match="SwiGLU has a bias"):  # the LayerNorm shift folded into the gate
        to_hooked_transformer(model, fold_norm=True)
    assert transformer_lens_name("transformer.blocks.3.norm2.hook_scale") == "blocks.3.ln2.hook_scale"
    assert transformer_lens_name("norm.hook_normalized") == "ln_final.hook_normalized"
