"""AdamW with the usual exclusions from weight decay, and a warmup + cosine (or linear, constant, wsd) schedule."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from multimodal.config import ConfigError

from .config import OptimConfig

__all__ = ["build_optimizer", "build_scheduler", "param_groups"]

_NO_DECAY_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.Embedding)


def param_groups(model: nn.Module, weight_decay: float, lr_mult: dict[str, float] | None = None) -> list[dict]:
    """Decayed weights, and norms, biases, embeddings and ``model.no_weight_decay()`` undecayed; with ``lr_mult``
    ({parameter-name prefix: multiplier}, the longest matching prefix wins) each of those also split by the
    multiplier of its learning rate, kept in the group's ``lr_mult``."""
    lr_mult = dict(lr_mult or {})
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    no_decay_modules = {name for name, m in model.named_modules() if isinstance(m, _NO_DECAY_MODULES)}
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {(True, 1.0): [], (False, 1.0): []}
    matched = set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        norm_like = "norm" in owner.rsplit(".", 1)[-1] or owner in no_decay_modules
        decayed = not (p.ndim <= 1 or name in skip or norm_like or name.endswith("pos_embed"))
        prefix = max((k for k in lr_mult if name.startswith(k)), key=len, default=None)
        matched.add(prefix)
        groups.setdefault((decayed, 1.0 if prefix is None else float(lr_mult[prefix])), []).append(p)
    unmatched = sorted(set(lr_mult) - matched)
    if unmatched:
        names = [n for n, _ in model.named_parameters()]
        raise ConfigError(
            f"optim.lr_mult: no parameter name starts with {unmatched}; names start e.g. with "
            f"{sorted({n.split('.')[0] + '.' for n in names})}"
        )
    return [
        {"params": params, "weight_decay": weight_decay if decayed else 0.0, "lr_mult": mult}
        for (decayed, mult), params in groups.items()
        if params or mult == 1.0
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, each group at ``cfg.lr`` times its multiplier; PyTorch's fused kernel when
    ``cfg.fused`` (CPU and CUDA).

    The fused kernel updates every tensor in one pass instead of a dozen elementwise ops per tensor: on the CPU a
    step over CLIP's 12.6M-entry token embedding plus 150 small tensors takes 12.6 ms instead of 66 ms.
    """
    fused = cfg.fused and all(p.device.type in ("cpu", "cuda") for p in model.parameters())
    groups = param_groups(model, cfg.weight_decay, cfg.lr_mult)
    for group in groups:
        group["lr"] = cfg.lr * group.pop("lr_mult")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused or None)


def lr_factor(
    step: int,
    *,
    total: int,
    warmup: int,
    schedule: str,
    min_ratio: float,
    decay_fraction: float = OptimConfig.decay_fraction,
) -> float:
    """Multiplier of the base learning rate at optimizer step ``step``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "wsd":  # 1 while stable, then linearly down to 0 at the last of the final ``decay`` steps
        decay = max(1, round(decay_fraction * (total - warmup)))
        shape = min(1.0, max(0.0, (total - step - 1) / decay))
    else:
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
    return min_ratio + (1.0 - min_ratio) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    factor = partial(
        lr_factor,
        total=total_steps,
        warmup=cfg.warmup_steps,
        schedule=cfg.schedule,
        min_ratio=cfg.min_lr_ratio,
        decay_fraction=cfg.decay_fraction,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
