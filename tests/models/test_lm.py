"""The attention-only language model: causal, the direct path alone at depth 0, the backbone's hook points."""

from __future__ import annotations

import pytest
import torch

from multimodal import create_model
from multimodal.nn import hook_points


def test_depth_zero_is_the_direct_path() -> None:
    torch.manual_seed(0)
    m = create_model("attn_only_lm", depth=0, vocab_size=10, context_length=6, dim=8, heads=2)
    tokens = torch.randint(0, 10, (3, 6))
    torch.testing.assert_close(m(tokens), (m.W_E[tokens] + m.W_pos) @ m.W_U)
    assert {n for n, _ in m.named_parameters()} == {"W_E", "W_pos", "W_U"}


def test_attention_only_blocks_have_no_mlp_and_the_lm_is_causal() -> None:
    torch.manual_seed(0)
    m = create_model("attn_only_lm", depth=2, vocab_size=10, context_length=6, dim=8, heads=2).eval()
    assert not any(".mlp." in n or "norm" in n for n, _ in m.named_parameters())
    names = set(hook_points(m))
    assert {"hook_embed", "hook_pos_embed", "transformer.blocks.1.attn.hook_pattern"} <= names
    assert not any("mlp" in n for n in names)
    tokens = torch.randint(0, 10, (2, 6))
    changed = tokens.clone()
    changed[:, 4] = (changed[:, 4] + 1) % 10
    assert torch.equal(m(tokens)[:, :4], m(changed)[:, :4]) and not torch.equal(m(tokens)[:, 4:], m(changed)[:, 4:])


def test_bad_input_is_refused() -> None:
    m = create_model("attn_only_lm", context_length=4)
    with pytest.raises(ValueError, match="5 tokens exceed context_length=4"):
        m(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"expected token ids of shape \(B, N\)"):
        m(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="depth must be >= 0"):
        create_model("attn_only_lm", depth=-1)
