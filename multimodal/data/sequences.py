"""Synthetic token sequences for circuits experiments: a random Markov chain, and a segment of it said twice.

Each sequence is ``[BOS] s s t``: ``s`` is a segment of ``p`` tokens drawn from a fixed random Markov chain over
ids 1..V-1 (id 0 is BOS), with ``p`` drawn per sequence from [min_period, max_period], and ``t`` the chain run on
to the common length ``1 + 2 * max_period``. The first occurrence of ``s`` can only be predicted from bigram
statistics (what a 0-layer model learns); its repeat can be predicted exactly by finding the earlier occurrence of
the present token and copying the token after it, which is what induction heads do (Olsson et al. 2022). The
period varies so that no fixed positional offset finds the earlier occurrence: attention must compose. Batches
are a pure function of (seed, index), so a resumed run sees the same data.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

__all__ = ["BOS", "MarkovRepeats", "bigram_log_probs"]

BOS = 0


@dataclasses.dataclass(frozen=True)
class MarkovRepeats:
    """Sequences of ``1 + 2 * max_period`` ids: BOS, a Markov-chain segment, the segment again, the chain on."""

    vocab_size: int = 64
    min_period: int = 8
    max_period: int = 24
    sharpness: float = 2.0  # std of the transition logits: larger = more predictable bigrams
    chain_seed: int = 0

    def __post_init__(self) -> None:
        if self.vocab_size < 3 or not 2 <= self.min_period <= self.max_period or self.sharpness < 0:
            raise ValueError(
                f"MarkovRepeats needs vocab_size >= 3, 2 <= min_period <= max_period and sharpness >= 0, got "
                f"{self.vocab_size}, {self.min_period}, {self.max_period}, {self.sharpness}"
            )

    @property
    def length(self) -> int:
        return 1 + 2 * self.max_period

    def transitions(self) -> Tensor:
        """(V, V) row-stochastic transition matrix: row i is softmax(sharpness * z_i) over ids 1..V-1 with z_i
        standard normal (``chain_seed``); BOS is never a successor, its row starts the chain."""
        gen = torch.Generator().manual_seed(self.chain_seed)
        V = self.vocab_size
        rows = (self.sharpness * torch.randn(V, V - 1, generator=gen)).softmax(-1)
        return torch.cat([torch.zeros(V, 1), rows], dim=1)  # (V, V): column BOS is zero

    def batch(self, size: int, *, seed: int, index: int, transitions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Batch ``index`` of the stream ``seed``: ids (size, length) and each sequence's period (size,)."""
        P = self.transitions() if transitions is None else transitions
        gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
        periods = torch.randint(self.min_period, self.max_period + 1, (size,), generator=gen)
        tokens = torch.empty(size, self.length, dtype=torch.long)
        tokens[:, 0] = BOS
        rows = torch.arange(size)
        for t in range(1, self.length):
            sampled = torch.multinomial(P[tokens[:, t - 1]], 1, generator=gen)[:, 0]
            earlier = tokens[rows, (t - periods).clamp(min=0)]  # the repeat's earlier occurrence
            tokens[:, t] = torch.where((t > periods) & (t <= 2 * periods), earlier, sampled)
        return tokens, periods

    def halves(self, periods: Tensor) -> tuple[Tensor, Tensor]:
        """Bool masks (size, length - 1) over next-token targets: the first occurrence's tokens 2..p, and the
        repeat's tokens 2..p (each half's first token cannot be copied or is BOS-led, so both leave it out)."""
        target = torch.arange(1, self.length)  # target position of each prediction
        p = periods[:, None]
        return (target >= 2) & (target <= p), (target >= p + 2) & (target <= 2 * p)


def bigram_log_probs(tokens: Tensor, vocab_size: int) -> tuple[Tensor, Tensor]:
    """(log P(next | current) (V, V) from the counts of ``tokens`` (B, N), the counts (V, V)); a row of an id never
    followed by anything is NaN."""
    pairs = tokens[:, :-1].flatten() * vocab_size + tokens[:, 1:].flatten()
    counts = torch.bincount(pairs, minlength=vocab_size * vocab_size).view(vocab_size, vocab_size).double()
    return (counts / counts.sum(-1, keepdim=True)).log(), counts
