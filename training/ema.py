"""Exponential moving average of model weights (Polyak averaging), checkpointed with the run."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ModelEma"]

NUM_UPDATES_KEY = "_ema_num_updates"


class ModelEma:
    """Keeps ``ema = d * ema + (1 - d) * weights`` after every optimizer step; buffers are copied.

    With ``warmup`` the decay of update n is d = min(decay, (1 + n) / (10 + n)) (the warmup timm and diffusers use),
    so a short run's average is not dominated by the initial weights; without it d = decay throughout.
    """

    def __init__(self, model: nn.Module, decay: float, *, warmup: bool = True) -> None:
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        ema = dict(self.module.named_parameters())
        params = [(ema[n], p.detach()) for n, p in model.named_parameters() if n in ema]
        torch._foreach_lerp_([e for e, _ in params], [p.to(e.dtype) for e, p in params], 1.0 - decay)
        ema_buffers = dict(self.module.named_buffers())
        for n, b in model.named_buffers():
            if n in ema_buffers:
                ema_buffers[n].copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.module.state_dict(), NUM_UPDATES_KEY: torch.tensor(self.num_updates)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        count = state.pop(NUM_UPDATES_KEY, None)
        self.num_updates = int(count) if count is not None else 1 << 30  # older checkpoints: past any warmup
        self.module.load_state_dict(state)
