"""A hand-built induction circuit (Elhage et al. 2021, figure "induction heads"): a previous-token head in layer 0
writes each token into a "previous token" subspace of the next position; a layer-1 head's keys read that subspace
and its queries the present token, so it attends to the token after the present token's earlier occurrence. The
scores and the K-composition must find exactly that. And patching every activation restores the clean output."""

from __future__ import annotations

import pytest
import torch

from multimodal import create_model
from multimodal.circuits import (
    attention_patterns,
    composition_baseline,
    composition_scores,
    head_weights,
    induction_scores,
    previous_token_scores,
    repeated_tokens,
)
from multimodal.nn import run_with_cache, run_with_hooks

V, PERIOD = 30, 10
N = 1 + 2 * PERIOD
TOK, POS, PREV = 0, V, V + N  # residual subspaces: present token, position, previous token
C = 2 * V + N
SHARP = 20 * C**0.5  # attention logits of 20 after the 1 / sqrt(head width) scaling: nearly one-hot patterns


def induction_model():
    m = create_model("attn_only_lm", vocab_size=V, context_length=N, dim=C, depth=2, heads=1, norm="none").eval()
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.W_E[:, TOK:V] = torch.eye(V)  # token t -> e_{TOK + t}
        m.W_pos[:, POS : POS + N] = torch.eye(N)  # position i -> e_{POS + i}
        m.W_U[TOK:V] = torch.eye(V)
        first, second = (block.attn for block in m.transformer.blocks)
        q, k, v = first.qkv.weight.view(3, C, C)  # (head dim, residual dim) each
        for i in range(N):
            q[i, POS + i] = SHARP  # query: "I am at i"
            if i + 1 < N:
                k[i + 1, POS + i] = 1.0  # key at j answers query j + 1: attend to the previous position
        v[:V, TOK:V] = torch.eye(V)  # value: the token there
        first.proj.weight[PREV : PREV + V, :V] = torch.eye(V)  # written into the previous-token subspace
        q, k, v = second.qkv.weight.view(3, C, C)
        q[:V, TOK:V] = SHARP * torch.eye(V)  # query: my token
        k[:V, PREV : PREV + V] = torch.eye(V)  # key: the token before you
        v[:V, TOK:V] = torch.eye(V)  # value: your token, which the head copies to the output
        second.proj.weight[TOK:V, :V] = 2 * torch.eye(V)  # outweighs the present token's own embedding
    return m


def scored_tokens() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.cat([torch.zeros(32, 1, dtype=torch.long), repeated_tokens(32, PERIOD, V - 1, generator=gen) + 1], 1)


def test_the_scores_find_the_previous_token_head_and_the_induction_head() -> None:
    patterns = attention_patterns(induction_model(), scored_tokens())  # (2, B, 1, N, N)
    previous, induction = previous_token_scores(patterns), induction_scores(patterns, PERIOD, prefix=1)
    assert previous[0, 0] > 0.99 and induction[0, 0] < 0.05
    assert induction[1, 0] > 0.8 and previous[1, 0] < 0.2  # < 1: a token said twice inside one segment splits it


def test_the_induction_head_k_composes_with_the_previous_token_head_far_above_chance() -> None:
    w = head_weights(induction_model())
    k, q = composition_scores(w, "k")[0, 0, 1, 0], composition_scores(w, "q")[0, 0, 1, 0]
    chance = composition_baseline(C, C)
    # The bound for two rank-30 identities is 1/sqrt(30) = 0.183 (the Frobenius ratio is 1 only for rank 1).
    assert k == pytest.approx(30**-0.5, rel=1e-4) and k > chance[-1]
    assert q < 1e-6  # its queries read the token subspace, which layer 0 never writes to


def test_the_circuit_predicts_the_repeat_and_patching_every_activation_restores_the_clean_output() -> None:
    m, tokens = induction_model(), scored_tokens()
    logits = m(tokens)  # position i predicts i + 1; on the repeat (after its first token) that is copied
    predicted = logits[:, PERIOD + 1 : -1].argmax(-1)
    assert (predicted == tokens[:, PERIOD + 2 :]).float().mean() > 0.8
    corrupted = torch.randint(1, V, tokens.shape, generator=torch.Generator().manual_seed(1))
    _, clean = run_with_cache(m, tokens)
    # The whole stream at one point carries everything downstream needs (the positions are the same in both runs).
    for name in ("hook_embed", "transformer.blocks.1.hook_resid_pre"):
        patched = run_with_hooks(m, corrupted, fwd_hooks=[(name, lambda x, hook: clean[hook.name])])
        torch.testing.assert_close(patched, logits)
    everything = [(n, lambda x, hook: clean[hook.name]) for n in clean]
    torch.testing.assert_close(run_with_hooks(m, corrupted, fwd_hooks=everything), logits)
