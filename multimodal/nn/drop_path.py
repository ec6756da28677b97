"""Stochastic depth (Huang et al. 2016): drop a residual branch per sample during training."""

from __future__ import annotations

from torch import Tensor, nn


def drop_path(x: Tensor, p: float = 0.0, training: bool = False, *, scale_by_keep: bool = True) -> Tensor:
    """Zero the whole of ``x`` for a random fraction p of samples (dim 0); identity when p == 0 or not training.

    Kept samples are scaled by 1 / (1 - p) when scale_by_keep, so the expectation is unchanged.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"drop path probability must be in [0, 1), got {p}")
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # (B, 1, ..., 1): one draw per sample
    mask = x.new_empty(shape).bernoulli_(keep)
    if scale_by_keep:
        mask.div_(keep)
    return x * mask


class DropPath(nn.Module):
    """Module form of :func:`drop_path`; active only in training mode."""

    def __init__(self, p: float = 0.0, *, scale_by_keep: bool = True) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {p}")
        self.p = p
        self.scale_by_keep = scale_by_keep

    def forward(self, x: Tensor) -> Tensor:
        """(B, ...) -> (B, ...)."""
        return drop_path(x, self.p, self.training, scale_by_keep=self.scale_by_keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"
