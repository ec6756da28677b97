"""DEMix layer (Gururangan et al. 2022, "DEMix Layers: Disentangling Domains for Modular Language Modeling"): one
feed-forward expert per domain (here, per task), chosen by the task label in training and mixed by a posterior
over tasks at inference when the label is unknown; experts can be added without touching the others."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from .moe import make_expert
from .task_moe import check_task_ids


class DEMixMlp(nn.Module):
    """One expert MLP per task.

    ``forward(x, task_ids=...)`` sends each sequence to its task's expert alone (weight 1: exactly that expert's
    output). ``forward(x, task_weights=...)`` mixes every expert by per-sequence weights (B, num_tasks) that sum
    to one, the posterior over tasks estimated from the sequence's context by the model that holds the layer.
    ``add_expert()`` appends an expert for a new task; the old tasks' outputs under their ids stay bit-identical.
    """

    def __init__(self, dim: int, hidden_dim: int, *, num_tasks: int, expert: str = "gelu", drop: float = 0.0) -> None:
        super().__init__()
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.dim = dim
        self.experts = nn.ModuleList(make_expert(expert, dim, hidden_dim, drop=drop) for _ in range(num_tasks))

    @property
    def num_tasks(self) -> int:
        return len(self.experts)

    @property
    def aux_loss(self) -> Tensor:
        """Zero: routing by label needs no balancing."""
        return torch.zeros((), device=self.experts[0].fc2.weight.device)

    def forward(self, x: Tensor, *, task_ids: Tensor | None = None, task_weights: Tensor | None = None) -> Tensor:
        """x (B, ..., C) with task_ids (B,) or task_weights (B, num_tasks) -> (B, ..., C)."""
        if x.ndim < 2 or x.shape[-1] != self.dim:
            raise ValueError(f"expected x of shape (B, ..., {self.dim}), got {tuple(x.shape)}")
        if (task_ids is None) == (task_weights is None):
            raise ValueError("DEMix needs either task_ids (B,) or task_weights (B, num_tasks), not both or neither")
        B = x.shape[0]
        out = torch.zeros_like(x)
        if task_ids is not None:
            task_ids = check_task_ids(task_ids, B, self.num_tasks)
            for task, expert in enumerate(self.experts):
                rows = (task_ids == task).nonzero().squeeze(1)  # (n,)
                if rows.numel():
                    out.index_copy_(0, rows, expert(x[rows]).to(out.dtype))
            return out
        if task_weights.shape != (B, self.num_tasks) or not task_weights.is_floating_point():
            raise ValueError(
                f"task_weights must be a float ({B}, {self.num_tasks}) tensor, got "
                f"{task_weights.dtype} {tuple(task_weights.shape)}"
            )
        for task, expert in enumerate(self.experts):
            rows = (task_weights[:, task] != 0).nonzero().squeeze(1)  # (n,) sequences that use this expert
            if rows.numel():
                weight = task_weights[rows, task].view(-1, *([1] * (x.ndim - 1)))  # (n, 1, ..., 1)
                out.index_add_(0, rows, (expert(x[rows]) * weight).to(out.dtype))
        return out

    def add_expert(self, init_from: int | None = None) -> int:
        """Append an expert for a new task, a copy of expert ``init_from`` (DEMix starts a new domain from its
        nearest one) or freshly initialised; returns the new task's index."""
        if init_from is not None and not 0 <= init_from < self.num_tasks:
            raise ValueError(f"init_from must be in [0, {self.num_tasks}), got {init_from}")
        template = self.experts[0 if init_from is None else init_from]
        new = copy.deepcopy(template)
        if init_from is None:
            for module in new.modules():
                if isinstance(module, nn.Linear):
                    module.reset_parameters()
        self.experts.append(new)
        return self.num_tasks - 1

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}"
