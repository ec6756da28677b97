"""Markov-chain sequences said twice: the layout, determinism, the chain, and the bigram table."""

from __future__ import annotations

import math

import pytest
import torch

from multimodal.data.sequences import BOS, MarkovRepeats, bigram_log_probs


def test_sequences_are_bos_then_a_segment_twice_and_a_pure_function_of_seed_and_index() -> None:
    data = MarkovRepeats(vocab_size=12, min_period=3, max_period=6)
    tokens, periods = data.batch(32, seed=3, index=7)
    assert tokens.shape == (32, 13) and (tokens[:, 0] == BOS).all() and (tokens[:, 1:] != BOS).all()
    assert set(periods.tolist()) == {3, 4, 5, 6}  # the period varies: no fixed offset finds the earlier occurrence
    for row, p in zip(tokens, periods.tolist(), strict=True):
        assert torch.equal(row[1 : p + 1], row[p + 1 : 2 * p + 1])
    again, _ = data.batch(32, seed=3, index=7)
    assert torch.equal(tokens, again) and not torch.equal(tokens, data.batch(32, seed=3, index=8)[0])
    first, repeat = data.halves(periods)  # over next-token targets 1..12
    p = periods[0].item()
    assert first[0].nonzero()[:, 0].tolist() == list(range(1, p)) and repeat[0].nonzero()[:, 0].tolist() == list(
        range(p + 1, 2 * p)
    )


def test_the_chain_is_row_stochastic_never_returns_to_bos_and_its_bigrams_are_recovered() -> None:
    data = MarkovRepeats(vocab_size=6, min_period=200, max_period=200, sharpness=1.0)
    P = data.transitions()
    torch.testing.assert_close(P.sum(-1), torch.ones(6))
    assert (P[:, BOS] == 0).all() and torch.equal(P, data.transitions())  # the same chain every call
    log_p, counts = bigram_log_probs(data.batch(64, seed=0, index=0)[0][:, 1:201], 6)  # the first halves only
    assert counts.sum().item() == 64 * 199
    torch.testing.assert_close(log_p[1:, 1:].exp(), P[1:, 1:].double(), atol=0.03, rtol=0)


@pytest.mark.parametrize("second_order", [0.0, 1.0])
def test_with_second_order_the_token_two_back_steers_the_next(second_order: float) -> None:
    """A sharp chain is nearly deterministic given what its logits read: with second_order the argmax of both
    tables predicts the sampled token, that of the first alone much less; without it the first alone does."""
    data = MarkovRepeats(vocab_size=16, min_period=100, max_period=100, sharpness=16.0, second_order=second_order)
    first, second = data.logits()
    assert first.shape == second.shape == (16, 16) and (first[:, BOS] == -math.inf).all()
    assert (second == 0).all() == (second_order == 0)
    tokens = data.batch(64, seed=0, index=0)[0][:, 1:101]  # the first occurrences only
    previous, two_back, nxt = tokens[:, 1:-1], tokens[:, :-2], tokens[:, 2:]
    both = (first[previous] + second[two_back]).argmax(-1)
    alone = first[previous].argmax(-1)
    assert (both == nxt).float().mean() > 0.9  # 0.93 and 0.97 here
    if second_order:
        assert (alone == nxt).float().mean() < 0.5  # 0.14 here
    else:
        assert torch.equal(both, alone)


def test_bigram_log_probs_count_pairs() -> None:
    log_p, counts = bigram_log_probs(torch.tensor([[0, 1, 1, 2]]), 3)
    assert counts.tolist() == [[0, 1, 0], [0, 1, 1], [0, 0, 0]]
    assert log_p[1].tolist() == [-math.inf, math.log(0.5), math.log(0.5)] and log_p[2].isnan().all()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="vocab_size >= 3, 2 <= min_period <= max_period"):
        MarkovRepeats(vocab_size=2)
    with pytest.raises(ValueError, match="2 <= min_period <= max_period"):
        MarkovRepeats(min_period=9, max_period=8)
    with pytest.raises(ValueError, match="second_order >= 0"):
        MarkovRepeats(second_order=-1.0)
