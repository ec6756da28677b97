"""Synthetic token sequences for circuits experiments: a random Markov chain, and a segment of it said twice.

Each sequence is ``[BOS] s s t``: ``s`` is a segment of ``p`` tokens drawn from a fixed random Markov chain over
ids 1..V-1 (id 0 is BOS), with ``p`` drawn per sequence from [min_period, max_period], and ``t`` the chain run on
to the common length ``1 + 2 * max_period``. The first occurrence of ``s`` can only be predicted from bigram
statistics (what a 0-layer model learns); its repeat can be predicted exactly by finding the earlier occurrence of
the present token and copying the token after it, which is what induction heads do (Olsson et al. 2022). The
period varies so that no fixed positional offset finds the earlier occurrence: attention must compose. Batches
are a pure function of (seed, index), so a resumed run sees the same data.

With ``second_order > 0`` the next token depends on the token two back as well (additive transition logits), as
it does in natural text: knowing the previous token then helps everywhere, not only in the repeat, which is what
makes a previous-token head worth learning.
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
    second_order: float = 0.0  # weight of the token two back in the transition logits (0: a bigram chain)
    chain_seed: int = 0

    def __post_init__(self) -> None:
        bad_period = not 2 <= self.min_period <= self.max_period
        if self.vocab_size < 3 or bad_period or min(self.sharpness, self.second_order) < 0:
            raise ValueError(
                f"MarkovRepeats needs vocab_size >= 3, 2 <= min_period <= max_period, sharpness >= 0 and "
                f"second_order >= 0, got {self.vocab_size}, {self.min_period}, {self.max_period}, {self.sharpness}, "
                f"{self.second_order}"
            )

    @property
    def length(self) -> int:
        return 1 + 2 * self.max_period

    def logits(self) -> Tensor:
        """(2, V, V) transition logits: next-token logits are ``logits[0, previous] + logits[1, two back]``.
        ``sharpness`` times standard normal (``chain_seed``) over ids 1..V-1, the second table also times
        ``second_order``; BOS (column 0) is never a successor (-inf) and as a predecessor starts the chain."""
        gen = torch.Generator().manual_seed(self.chain_seed)
        V = self.vocab_size
        first = self.sharpness * torch.randn(V, V - 1, generator=gen)
        second = self.second_order * self.sharpness * torch.randn(V, V - 1, generator=gen)
        never = torch.full((V, 1), float("-inf"))  # BOS as a successor
        return torch.stack([torch.cat([never, first], dim=1), torch.cat([torch.zeros(V, 1), second], dim=1)])

    def transitions(self) -> Tensor:
        """(V, V) row-stochastic first-order transition matrix (the chain itself when ``second_order`` is 0)."""
        return self.logits()[0].softmax(-1)

    def batch(self, size: int, *, seed: int, index: int, logits: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Batch ``index`` of the stream ``seed``: ids (size, length) and each sequence's period (size,)."""
        first, second = self.logits() if logits is None else logits
        gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
        periods = torch.randint(self.min_period, self.max_period + 1, (size,), generator=gen)
        tokens = torch.empty(size, self.length, dtype=torch.long)
        tokens[:, 0] = BOS
        rows = torch.arange(size)
        for t in range(1, self.length):
            step = first[tokens[:, t - 1]] + second[tokens[:, max(t - 2, 0)]]  # t = 1: BOS is also two back
            sampled = torch.multinomial(step.softmax(-1), 1, generator=gen)[:, 0]
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
