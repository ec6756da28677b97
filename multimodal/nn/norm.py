"""Normalisation layers: LayerNorm and RMSNorm with hook points, and a ``build_norm`` factory keyed by name.

Both norms have TransformerLens's hook points: ``hook_scale`` (..., 1), the divisor ``sqrt(var + eps)`` (RMSNorm:
``sqrt(mean(x^2) + eps)``), and ``hook_normalized`` (..., dim), the input divided by it (LayerNorm: centred first),
before the learned scale and shift. While neither is hooked LayerNorm runs the fused kernel; hooked, it computes
the same thing step by step so the scale exists to read or replace.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .hooks import HookPoint

NORMS = ("layer", "rms", "none")


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last dim (same parameters and state dict) with ``hook_scale`` and
    ``hook_normalized``."""

    def __init__(self, dim: int, *, eps: float = 1e-5) -> None:
        super().__init__(dim, eps=eps)
        self.hook_scale, self.hook_normalized = HookPoint(), HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        """(..., dim) -> (..., dim)."""
        if not (self.hook_scale.active() or self.hook_normalized.active()):
            return super().forward(x)
        h = x.float()
        h = h - h.mean(dim=-1, keepdim=True)
        scale = self.hook_scale((h.pow(2).mean(dim=-1, keepdim=True) + self.eps).sqrt())  # (..., 1)
        h = self.hook_normalized(h / scale)
        return (h * self.weight.float() + self.bias.float()).to(x.dtype)


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019): ``x / sqrt(mean(x^2) + eps) * weight`` over the last dim.

    Computed in float32 and cast back to the input dtype, so bfloat16 / float16 inputs stay stable.
    """

    def __init__(self, dim: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.hook_scale, self.hook_normalized = HookPoint(), HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        """(..., dim) -> (..., dim) in x's dtype."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"expected last dim {self.dim}, got input of shape {tuple(x.shape)}")
        h = x.float()
        if self.hook_scale.active() or self.hook_normalized.active():
            h = self.hook_normalized(h / self.hook_scale((h.pow(2).mean(dim=-1, keepdim=True) + self.eps).sqrt()))
        else:
            h = h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # (..., dim)
        return (h * self.weight.float()).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


def build_norm(kind: str, dim: int, *, eps: float | None = None) -> nn.Module:
    """Norm layer by name: "layer" (:class:`LayerNorm`), "rms" (``RMSNorm``) or "none" (``nn.Identity``, for the
    norm-free toy models of circuits work); eps defaults to 1e-6.

    timm ViTs use LayerNorm eps 1e-6; open_clip / OpenAI CLIP use 1e-5, so pass eps=1e-5 to load those.
    """
    eps = 1e-6 if eps is None else eps
    if kind == "layer":
        return LayerNorm(dim, eps=eps)
    if kind == "rms":
        return RMSNorm(dim, eps=eps)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; valid norms: {', '.join(NORMS)}")
