"""Branch-Train-Merge (Li et al. 2022) for GATO: branches start from one seed model, train apart on their own tasks,
and merge back by ensembling (each branch weighted by its posterior given the context) or by averaging parameters.

Training the branches is ordinary training (``model.init_from`` the seed run, ``task.mixture`` one task or a
group); this module merges the trained branches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .gato import Gato, last_positions

__all__ = ["GatoEnsemble", "average_branches"]


@torch.no_grad()
def average_branches(branches: Sequence[Gato], weights: Sequence[float] | None = None) -> Gato:
    """One GATO whose every parameter and buffer is the weighted mean of the branches' (uniform by default):
    computed as the first branch's value plus the weighted mean of the others' differences from it, so N identical
    branches average to exactly themselves. The branches must share one architecture."""
    if not branches:
        raise ValueError("average_branches needs at least one branch")
    weights = [1.0 / len(branches)] * len(branches) if weights is None else list(weights)
    if len(weights) != len(branches) or any(w < 0 for w in weights) or not math.isclose(sum(weights), 1.0):
        raise ValueError(f"need one non-negative weight per branch, summing to 1; got {weights}")
    first = branches[0]
    if any(b.cfg != first.cfg for b in branches[1:]):
        raise ValueError("the branches differ in architecture (their cfg); only branches of one seed can be averaged")
    states = [b.state_dict() for b in branches]
    merged = {}
    for key, base in states[0].items():
        if not base.is_floating_point():  # integer buffers (none in GATO today) must agree
            if any(not torch.equal(s[key], base) for s in states[1:]):
                raise ValueError(f"the branches' integer buffer {key!r} differs; it cannot be averaged")
            merged[key] = base
            continue
        update = sum(w * (s[key].float() - base.float()) for w, s in zip(weights[1:], states[1:], strict=True))
        merged[key] = (base.float() + update).to(base.dtype) if len(states) > 1 else base
    with torch.random.fork_rng(devices=[]):
        out = Gato(first.cfg).to(first.token_embed.weight.device)
    out.load_state_dict(merged)
    return out.train(first.training)


class GatoEnsemble(nn.Module):
    """Branches as one agent: the next-token distribution is the branches' distributions mixed by the posterior over
    branches given each sequence's context, ``p(j | x) ∝ prior_j p_j(x)`` with ``p_j(x)`` branch j's likelihood of
    the context's text and action tokens (BTM's domain posterior; a uniform prior by default). Duck-types the parts
    of :class:`Gato` the agent and captioner use (``cfg``, ``next_token``)."""

    def __init__(self, branches: Sequence[Gato], prior: Sequence[float] | None = None) -> None:
        super().__init__()
        if not branches:
            raise ValueError("an ensemble needs at least one branch")
        layouts = {(b.cfg.vocab_size, b.cfg.context_length, b.cfg.patch_size) for b in branches}
        if len(layouts) != 1:
            raise ValueError(f"the branches differ in vocabulary, context or patch size: {sorted(layouts)}")
        if any(b.cfg.routes_by_task for b in branches):
            raise ValueError("ensemble branches must be dense GATOs (no task-routed experts)")
        self.branches = nn.ModuleList(branches)
        prior = torch.full((len(branches),), 1.0 / len(branches)) if prior is None else torch.tensor(prior)
        if prior.shape != (len(branches),) or (prior < 0).any() or not math.isclose(float(prior.sum()), 1.0):
            raise ValueError(f"prior must be {len(branches)} non-negative weights summing to 1, got {prior.tolist()}")
        self.register_buffer("log_prior", prior.float().log(), persistent=False)

    @property
    def cfg(self):
        """The first branch's config (the branches share context, vocabulary and patch layout)."""
        return self.branches[0].cfg

    @torch.no_grad()
    def weights(self, batch: dict[str, Tensor]) -> Tensor:
        """Posterior over branches for each sequence: (B, branches), rows summing to one."""
        return self._posterior(batch, [b(batch) for b in self.branches])

    def _posterior(self, batch: dict[str, Tensor], hidden: list[Tensor]) -> Tensor:
        scores = torch.stack(
            [b.target_log_likelihood(batch, h) for b, h in zip(self.branches, hidden, strict=True)], dim=1
        )  # (B, branches)
        return (scores + self.log_prior).softmax(-1)

    @torch.no_grad()
    def next_token(
        self,
        batch: dict[str, Tensor],
        token_range: tuple[int, int],
        *,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """As :meth:`Gato.next_token`, from the posterior-weighted mixture of the branches' distributions over
        ``token_range``: (B,)."""
        last = last_positions(batch)
        hidden = [b(batch) for b in self.branches]  # one forward per branch gives its likelihood and its guess
        weights = self._posterior(batch, hidden)  # (B, branches)
        mixed = sum(
            weights[:, j : j + 1] * b.logits(h[last], token_range).float().softmax(-1)
            for j, (b, h) in enumerate(zip(self.branches, hidden, strict=True))
        )  # (B, hi - lo)
        if temperature > 0:
            choice = torch.multinomial(mixed.pow(1 / temperature), 1, generator=generator)[:, 0]
        else:
            choice = mixed.argmax(-1)
        return choice + token_range[0]
