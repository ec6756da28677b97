"""Mixture-of-experts MLP with token-choice top-k routing (Switch / GShard) or fixed hash routing (Hash Layers).

References: Fedus et al. 2022, "Switch Transformers"; Lepikhin et al. 2021, "GShard"; Roller et al. 2021,
"Hash Layers For Large Sparse Models".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mlp import Mlp, SwiGLU

ROUTERS = ("topk", "hash")
EXPERTS = ("gelu", "swiglu")


def make_expert(kind: str, dim: int, hidden_dim: int, *, drop: float = 0.0) -> nn.Module:
    """One expert MLP by name: "gelu" (``Mlp``) or "swiglu" (``SwiGLU``)."""
    if kind not in EXPERTS:
        raise ValueError(f"unknown expert {kind!r}; valid experts: {', '.join(EXPERTS)}")
    return Mlp(dim, hidden_dim, drop=drop) if kind == "gelu" else SwiGLU(dim, hidden_dim, drop=drop)


def switch_load_balancing_loss(router_probs: Tensor, expert_index: Tensor, num_experts: int) -> Tensor:
    """Switch Transformer load-balancing loss ``E * sum_i f_i * P_i`` (Fedus et al. 2022, eq. 4-6).

    Args:
        router_probs: (T, E) softmax router probabilities.
        expert_index: (T,) or (T, k) chosen experts; only the first choice counts towards f_i.
        num_experts: E.

    f_i is the fraction of tokens whose first choice is expert i, P_i the mean router probability of expert i.
    The loss is 1.0 under perfectly uniform routing and grows as routing concentrates; it is differentiable
    through P only.
    """
    if router_probs.ndim != 2 or router_probs.shape[1] != num_experts:
        raise ValueError(f"router_probs must have shape (T, {num_experts}), got {tuple(router_probs.shape)}")
    if expert_index.ndim not in (1, 2) or expert_index.shape[0] != router_probs.shape[0]:
        raise ValueError(
            f"expert_index must have shape (T,) or (T, k) with T={router_probs.shape[0]}, "
            f"got {tuple(expert_index.shape)}"
        )
    first = expert_index if expert_index.ndim == 1 else expert_index[:, 0]  # (T,)
    tokens_fraction = F.one_hot(first, num_experts).to(router_probs.dtype).mean(0)  # (E,) f_i
    prob_fraction = router_probs.mean(0)  # (E,) P_i
    return num_experts * (tokens_fraction * prob_fraction).sum()


class MoEMlp(nn.Module):
    """Sparse mixture of expert MLPs over the last dim of any (..., C) input.

    ``router="topk"``: a learned linear router gives float32 softmax probabilities; each token picks its top_k
    experts (Switch for k=1, GShard-style for k=2). The gate is the chosen probability (k=1) or the chosen
    probabilities renormalised over the k choices (k>1). Each expert holds at most
    ``ceil(capacity_factor * tokens * top_k / num_experts)`` tokens per forward; assignments past capacity are
    dropped in priority order (all first choices in token order, then all second choices, ...) and contribute
    zero, so the block's residual carries those tokens through. ``capacity_factor=None`` disables dropping.

    ``router="hash"``: a fixed, non-learned lookup table (a seeded random, balanced assignment of
    ``hash_vocab_size`` ids to experts) sends token id ``t`` to expert ``table[t % hash_vocab_size]`` with gate 1.0.
    ``token_ids`` default to each token's position along dim -2 (the sequence axis), so without ids the routing
    is a fixed function of position. Hash routing is top-1 and never drops tokens (capacity does not apply).

    After each forward, ``aux_loss`` holds the Switch load-balancing loss (0 for hash routing) and
    ``last_expert_index`` (T, k), ``last_kept`` (T, k) and ``last_router_probs`` (T, E) (None for hash) describe
    the routing, with T the number of tokens.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        *,
        num_experts: int,
        top_k: int = 1,
        capacity_factor: float | None = 1.25,
        router: str = "topk",
        expert: str = "gelu",
        hash_vocab_size: int = 65536,
        hash_seed: int = 0,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        if router not in ROUTERS:
            raise ValueError(f"unknown router {router!r}; valid routers: {', '.join(ROUTERS)}")
        if expert not in EXPERTS:
            raise ValueError(f"unknown expert {expert!r}; valid experts: {', '.join(EXPERTS)}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        if router == "hash" and top_k != 1:
            raise ValueError(f"hash routing sends each token to one expert; use top_k=1, got {top_k}")
        if capacity_factor is not None and capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be > 0 (or None for no capacity limit), got {capacity_factor}")
        if hash_vocab_size < 1:
            raise ValueError(f"hash_vocab_size must be >= 1, got {hash_vocab_size}")
        self.dim = dim
        self.num_experts = num_experts
        self.top_k = top_k
        self.capacity_factor = capacity_factor
        self.router_type = router
        self.hash_vocab_size = hash_vocab_size

        if router == "topk":
            self.router = nn.Linear(dim, num_experts, bias=False)
        else:
            self.router = None
            generator = torch.Generator().manual_seed(hash_seed)
            table = torch.randperm(hash_vocab_size, generator=generator) % num_experts  # balanced: ids per expert +-1
            self.register_buffer("hash_table", table)
        self.experts = nn.ModuleList(make_expert(expert, dim, hidden_dim, drop=drop) for _ in range(num_experts))

        self._aux_loss: Tensor | None = None
        self.last_expert_index: Tensor | None = None
        self.last_kept: Tensor | None = None
        self.last_router_probs: Tensor | None = None

    @property
    def aux_loss(self) -> Tensor:
        """Switch load-balancing loss of the last forward (float32 scalar; zero before any forward or for hash)."""
        if self._aux_loss is None:
            return torch.zeros((), device=self.experts[0].fc1.weight.device)
        return self._aux_loss

    def capacity(self, num_tokens: int) -> int | None:
        """Maximum number of token assignments per expert for a forward over num_tokens tokens."""
        if self.capacity_factor is None or self.router_type == "hash":
            return None
        return math.ceil(self.capacity_factor * num_tokens * self.top_k / self.num_experts)

    def forward(self, x: Tensor, *, token_ids: Tensor | None = None) -> Tensor:
        """(..., C) -> (..., C). ``token_ids`` (x.shape[:-1], integer) are used by hash routing only."""
        if x.ndim < 2 or x.shape[-1] != self.dim:
            raise ValueError(f"expected x of shape (..., N, {self.dim}), got {tuple(x.shape)}")
        x_flat = x.reshape(-1, self.dim)  # (T, C)
        T = x_flat.shape[0]

        if self.router_type == "hash":
            expert_index = self._hash_route(x, token_ids)[:, None]  # (T, 1)
            gates = torch.ones(T, 1, device=x.device)  # (T, 1)
            kept = torch.ones(T, 1, dtype=torch.bool, device=x.device)
            probs = None
            self._aux_loss = torch.zeros((), device=x.device)
        else:
            with torch.autocast(x.device.type, enabled=False):
                logits = F.linear(x_flat.float(), self.router.weight.float())  # (T, E)
            probs = logits.softmax(dim=-1)  # (T, E) float32
            top_probs, expert_index = probs.topk(self.top_k, dim=-1)  # (T, k)
            gates = top_probs / top_probs.sum(dim=-1, keepdim=True) if self.top_k > 1 else top_probs
            kept = self._within_capacity(expert_index)  # (T, k)
            self._aux_loss = switch_load_balancing_loss(probs, expert_index, self.num_experts)

        self.last_expert_index = expert_index.detach()
        self.last_kept = kept
        self.last_router_probs = None if probs is None else probs.detach()
        return self._dispatch(x_flat, expert_index, gates, kept).reshape(x.shape)

    def _hash_route(self, x: Tensor, token_ids: Tensor | None) -> Tensor:
        """Expert of each token (T,) from its id, or from its position along dim -2 when ids are not given."""
        lead = x.shape[:-1]
        if token_ids is None:
            token_ids = torch.arange(lead[-1], device=x.device).expand(lead)  # (..., N) position ids
        elif token_ids.shape != lead:
            raise ValueError(
                f"token_ids must have shape {tuple(lead)} (x without its last dim), got {tuple(token_ids.shape)}"
            )
        elif token_ids.is_floating_point() or token_ids.dtype == torch.bool:
            raise ValueError(f"token_ids must be an integer tensor, got dtype {token_ids.dtype}")
        return self.hash_table[token_ids.reshape(-1).long() % self.hash_vocab_size]  # (T,)

    def _within_capacity(self, expert_index: Tensor) -> Tensor:
        """(T, k) bool: True where an assignment fits its expert's capacity."""
        T, k = expert_index.shape
        capacity = self.capacity(T)
        if capacity is None:
            return torch.ones_like(expert_index, dtype=torch.bool)
        priority = expert_index.t().reshape(-1)  # (k*T,) first choices in token order, then second choices, ...
        one_hot = F.one_hot(priority, self.num_experts)  # (k*T, E)
        position = one_hot.cumsum(dim=0).gather(1, priority[:, None]).squeeze(1) - 1  # (k*T,) slot in its expert
        return (position < capacity).reshape(k, T).t()  # (T, k)

    def _dispatch(self, x_flat: Tensor, expert_index: Tensor, gates: Tensor, kept: Tensor) -> Tensor:
        """Run each expert once on the tokens routed to it and sum gate-weighted outputs per token: (T, C)."""
        k = expert_index.shape[1]
        slots = kept.reshape(-1).nonzero().squeeze(1)  # (S,) kept assignments; slot s belongs to token s // k
        slot_expert = expert_index.reshape(-1)[slots]  # (S,)
        slots = slots[slot_expert.argsort(stable=True)]  # grouped by expert, token order within each group
        counts = torch.bincount(slot_expert, minlength=self.num_experts).tolist()  # host sync: split sizes
        slot_gates = gates.reshape(-1)
        out = torch.zeros_like(x_flat)  # (T, C) dropped assignments contribute zero
        for expert, expert_slots in zip(self.experts, slots.split(counts), strict=True):
            token = expert_slots // k  # (n_e,)
            y = expert(x_flat[token]) * slot_gates[expert_slots, None]  # (n_e, C)
            out.index_add_(0, token, y.to(out.dtype))
        return out

    def extra_repr(self) -> str:
        return (
            f"router={self.router_type!r}, num_experts={self.num_experts}, top_k={self.top_k}, "
            f"capacity_factor={self.capacity_factor}"
        )
