"""Task-level mixture of experts (Kudugunta et al. 2021, "Beyond Distillation: Task-level Mixture-of-Experts for
Efficient Inference"): every token of a sequence goes to the experts its task's gate chooses, so a task's
subnetwork can be taken out as a small dense MLP."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .mlp import Mlp, SwiGLU
from .moe import make_expert, switch_load_balancing_loss


def check_task_ids(task_ids: Tensor | None, batch: int, num_tasks: int) -> Tensor:
    """``task_ids`` as a (B,) long tensor, or a ValueError that says what is wrong with them."""
    if task_ids is None:
        raise ValueError("this MLP routes by task: pass task_ids, one task index per sequence, shape (B,)")
    if task_ids.shape != (batch,) or task_ids.is_floating_point() or task_ids.dtype == torch.bool:
        raise ValueError(f"task_ids must be a ({batch},) integer tensor, got {task_ids.dtype} {tuple(task_ids.shape)}")
    if batch and (task_ids.min() < 0 or task_ids.max() >= num_tasks):
        raise ValueError(f"task_ids must lie in [0, {num_tasks}), got {task_ids.unique().tolist()}")
    return task_ids.long()


def merge_experts(experts: Sequence[nn.Module], weights: Sequence[float]) -> nn.Module:
    """One dense MLP equal to ``sum_j weights[j] * experts[j](x)``: the experts' hidden units side by side (fc1
    rows concatenated), each expert's fc2 columns scaled by its weight. Exact up to float summation order."""
    if not experts or len(experts) != len(weights):
        raise ValueError(f"need one weight per expert, got {len(experts)} experts and {len(weights)} weights")
    first = experts[0]
    if not all(type(e) is type(first) for e in experts) or not isinstance(first, (Mlp, SwiGLU)):
        raise ValueError(f"can merge Mlp or SwiGLU experts of one kind, got {[type(e).__name__ for e in experts]}")
    dim, hidden = first.fc2.out_features, first.fc2.in_features
    bias = first.fc1.bias is not None
    if isinstance(first, Mlp):
        merged = Mlp(dim, hidden * len(experts), act_layer=type(first.act), bias=bias, drop=first.drop1.p)
        fc1_weight = torch.cat([e.fc1.weight for e in experts])  # (k * hidden, dim)
        fc1_bias = torch.cat([e.fc1.bias for e in experts]) if bias else None
    else:  # SwiGLU's fc1 is [gate; value]: all gates first, then all values
        merged = SwiGLU(dim, hidden * len(experts), bias=bias, drop=first.drop1.p)
        gates, values = zip(*(e.fc1.weight.chunk(2) for e in experts), strict=True)
        fc1_weight = torch.cat([*gates, *values])  # (2 * k * hidden, dim)
        fc1_bias = None
        if bias:
            gate_bias, value_bias = zip(*(e.fc1.bias.chunk(2) for e in experts), strict=True)
            fc1_bias = torch.cat([*gate_bias, *value_bias])
    with torch.no_grad():
        merged.fc1.weight.copy_(fc1_weight)
        merged.fc2.weight.copy_(torch.cat([w * e.fc2.weight for e, w in zip(experts, weights, strict=True)], dim=1))
        if bias:
            merged.fc1.bias.copy_(fc1_bias)
            merged.fc2.bias.copy_(sum(w * e.fc2.bias for e, w in zip(experts, weights, strict=True)))
    return merged.to(first.fc2.weight.device, first.fc2.weight.dtype)


class TaskMoEMlp(nn.Module):
    """Experts chosen per task, not per token: sequence b's tokens all go to the ``top_k`` experts with the largest
    gate probabilities of its task ``task_ids[b]``.

    Each task has a learned row of gate logits over the experts (a linear router on a one-hot task embedding, as
    Kudugunta et al. route by task), initialised N(0, 1) so that tasks start spread over the experts. The output is
    the chosen experts' outputs weighted by their probabilities (top-1: the raw probability, as Switch; top-k: the
    chosen probabilities renormalised), so the gate logits learn through the weights while the choice may change
    as they move. No token is ever dropped.

    ``aux_loss`` is the Switch load-balancing loss over the tasks (each task weighted equally), not over a batch's
    tokens: a batch of one task says nothing about balance. Add it, times a small weight, to the task loss.
    ``dense_expert(task)`` returns the task's subnetwork as one dense MLP of hidden size top_k * hidden_dim.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        *,
        num_experts: int,
        num_tasks: int,
        top_k: int = 1,
        expert: str = "gelu",
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        if num_experts < 1 or num_tasks < 1:
            raise ValueError(f"num_experts and num_tasks must be >= 1, got {num_experts} and {num_tasks}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        self.dim = dim
        self.num_experts = num_experts
        self.num_tasks = num_tasks
        self.top_k = top_k
        self.gate_logits = nn.Parameter(torch.randn(num_tasks, num_experts))  # (tasks, E)
        self.experts = nn.ModuleList(make_expert(expert, dim, hidden_dim, drop=drop) for _ in range(num_experts))
        self.last_expert_index: Tensor | None = None

    def routing(self) -> tuple[Tensor, Tensor]:
        """(experts, weights), both (tasks, top_k): each task's chosen experts, best first, and their weights."""
        probs = self.gate_logits.float().softmax(-1)  # (tasks, E)
        top, index = probs.topk(self.top_k, dim=-1)  # (tasks, k)
        return index, top / top.sum(-1, keepdim=True) if self.top_k > 1 else top

    @property
    def aux_loss(self) -> Tensor:
        """Switch load-balancing loss of the tasks' routing (1.0 when first choices and probabilities are even)."""
        probs = self.gate_logits.float().softmax(-1)
        return switch_load_balancing_loss(probs, probs.argmax(-1), self.num_experts)

    def forward(self, x: Tensor, *, task_ids: Tensor | None = None, task_weights: Tensor | None = None) -> Tensor:
        """x (B, ..., C), task_ids (B,) -> (B, ..., C). ``task_weights`` (DEMix's mixture over tasks) is refused:
        the gates choose the experts."""
        if x.ndim < 2 or x.shape[-1] != self.dim:
            raise ValueError(f"expected x of shape (B, ..., {self.dim}), got {tuple(x.shape)}")
        if task_weights is not None:
            raise ValueError("task MoE routes by task_ids; task_weights (a mixture over tasks) are for DEMix")
        task_ids = check_task_ids(task_ids, x.shape[0], self.num_tasks)
        index, weights = self.routing()
        index, weights = index[task_ids], weights[task_ids]  # 2 x (B, k)
        self.last_expert_index = index.detach()
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows, slot = (index == e).nonzero(as_tuple=True)  # sequences routed to e, and which of their k choices
            if rows.numel():
                gate = weights[rows, slot].view(-1, *([1] * (x.ndim - 1)))  # (n, 1, ..., 1)
                out.index_add_(0, rows, (expert(x[rows]) * gate).to(out.dtype))
        return out

    @torch.no_grad()
    def dense_expert(self, task: int) -> nn.Module:
        """Task ``task``'s subnetwork as one dense MLP (its top_k experts merged, gates folded into fc2)."""
        if not 0 <= task < self.num_tasks:
            raise ValueError(f"task must be in [0, {self.num_tasks}), got {task}")
        index, weights = self.routing()
        return merge_experts([self.experts[e] for e in index[task].tolist()], weights[task].tolist())

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, num_tasks={self.num_tasks}, top_k={self.top_k}"
