"""Exponential moving average of model weights (Polyak averaging), checkpointed with the run."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ModelEma"]


class ModelEma:
    """Keeps ``ema = decay * ema + (1 - decay) * weights`` after every optimizer step; buffers are copied."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema = dict(self.module.named_parameters())
        params = [(ema[n], p.detach()) for n, p in model.named_parameters() if n in ema]
        torch._foreach_lerp_([e for e, _ in params], [p.to(e.dtype) for e, p in params], 1.0 - self.decay)
        ema_buffers = dict(self.module.named_buffers())
        for n, b in model.named_buffers():
            if n in ema_buffers:
                ema_buffers[n].copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
