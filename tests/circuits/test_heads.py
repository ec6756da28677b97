"""Head scores on planted patterns, ablation equal to zeroed weights or to the mean output, and activation patching
that restores exactly what it should."""

from __future__ import annotations

import pytest
import torch

from multimodal.circuits import (
    ablate_heads,
    attention_patterns,
    duplicate_token_scores,
    induction_scores,
    patch_heads,
    patch_residual,
    previous_token_scores,
    repeated_tokens,
)
from multimodal.nn import Transformer, run_with_cache


def test_repeated_tokens_repeat_after_the_prefix() -> None:
    tokens = repeated_tokens(3, 5, 50, prefix=[7], generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (3, 11) and (tokens[:, 0] == 7).all() and torch.equal(tokens[:, 1:6], tokens[:, 6:])
    with pytest.raises(ValueError, match="period >= 2"):
        repeated_tokens(1, 1, 50)


def test_scores_find_planted_previous_token_duplicate_and_induction_heads() -> None:
    period, prefix = 4, 1
    N = prefix + 2 * period
    patterns = torch.zeros(1, 2, 4, N, N)  # (L, B, H, N, N); rows attend to position 0 unless planted
    patterns[..., 0] = 1.0
    for q in range(N):
        for head, key in ((0, q - 1), (1, q - period), (2, q - period + 1)):
            if key >= 0 and (head == 0 or q >= prefix + period):
                patterns[0, :, head, q] = 0.0
                patterns[0, :, head, q, key] = 1.0
    prev = previous_token_scores(patterns)[0]
    dup = duplicate_token_scores(patterns, period, prefix=prefix)[0]
    ind = induction_scores(patterns, period, prefix=prefix)[0]
    assert prev.tolist() == [1.0] + [pytest.approx(1 / 8)] * 3  # the others: query 1 attends to 0 by default
    assert dup.tolist() == [0.0, 1.0, 0.0, 0.0] and ind.tolist() == [0.0, 0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="too short"):
        induction_scores(patterns, N + 1)


def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(16, 2, heads=4).eval()


def test_attention_patterns_are_every_blocks_pattern() -> None:
    m, x = model(), torch.randn(2, 5, 16)
    patterns = attention_patterns(m, x, causal=True)
    assert patterns.shape == (2, 2, 4, 5, 5)
    torch.testing.assert_close(patterns.sum(-1), torch.ones(2, 2, 4, 5))
    with pytest.raises(ValueError, match=r"Linear has no hook points named attn\.hook_pattern"):
        attention_patterns(torch.nn.Linear(16, 16), x)


def test_zero_ablation_is_the_head_removed_from_the_weights_and_mean_ablation_its_mean_output() -> None:
    m, x = model(), torch.randn(2, 5, 16)
    ablated = ablate_heads(m, lambda: m(x), [(1, 2), (0, 0)])
    reference = model()
    with torch.no_grad():
        reference.blocks[1].attn.proj.weight[:, 8:12] = 0
        reference.blocks[0].attn.proj.weight[:, 0:4] = 0
    torch.testing.assert_close(ablated, reference(x))

    _, cache = run_with_cache(m, x)
    mean_z = cache["blocks.1.attn.hook_z"][:, :, 3].mean(dim=(0, 1))  # (D,)
    mean_ablated = ablate_heads(m, lambda: run_with_cache(m, x)[1]["blocks.1.attn.hook_z"], [(1, 3)], mode="mean")
    assert torch.equal(mean_ablated[:, :, 3], mean_z.expand(2, 5, 4))
    torch.testing.assert_close(mean_ablated[:, :, :3], cache["blocks.1.attn.hook_z"][:, :, :3])
    for bad, message in (([(2, 0)], "layer 2 out of range: the model has 2"), ([(0, 4)], "head 4 out of range")):
        with pytest.raises(ValueError, match=message):
            ablate_heads(m, lambda: m(x), bad)


def test_patching_the_changed_position_at_the_input_restores_everything_and_others_nothing() -> None:
    m = model()
    clean = torch.randn(1, 6, 16)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randn(16)  # only position 2 differs
    result = patch_residual(m, lambda x: m(x, causal=True), clean, corrupted, lambda out: out[:, -1].sum().item())
    assert result.shape == (2, 6)
    assert result[0, 2].item() == pytest.approx(1.0, abs=1e-5)  # block 0's input at 2: the whole difference
    assert result[0, [0, 1, 3, 4, 5]].abs().max().item() < 1e-5  # positions that did not differ change nothing
    assert result[1, :2].abs().max().item() < 1e-5  # causal: later positions never reach back to 0 and 1


def test_head_patching_of_a_linear_metric_of_the_attention_output_sums_to_one() -> None:
    m = Transformer(16, 1, heads=4).eval()
    clean, corrupted = torch.randn(1, 5, 16), torch.randn(1, 5, 16)

    def attn_out(x):
        return run_with_cache(m, x, causal=True, names_filter="blocks.0.hook_attn_out")[1]["blocks.0.hook_attn_out"]

    result = patch_heads(m, attn_out, clean, corrupted, lambda out: out[:, -1].sum().item())
    assert result.shape == (1, 4)
    assert result.sum().item() == pytest.approx(1.0, abs=1e-4)  # the output is a sum over heads: shares add up
