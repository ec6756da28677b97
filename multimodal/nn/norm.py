"""Normalisation layers: RMSNorm and a ``build_norm`` factory keyed by name ("layer" | "rms")."""

from __future__ import annotations

import torch
from torch import Tensor, nn

NORMS = ("layer", "rms", "none")


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019): ``x / sqrt(mean(x^2) + eps) * weight`` over the last dim.

    Computed in float32 and cast back to the input dtype, so bfloat16 / float16 inputs stay stable.
    """

    def __init__(self, dim: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        """(..., dim) -> (..., dim) in x's dtype."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"expected last dim {self.dim}, got input of shape {tuple(x.shape)}")
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # (..., dim)
        return (h * self.weight.float()).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


def build_norm(kind: str, dim: int, *, eps: float | None = None) -> nn.Module:
    """Norm layer by name: "layer" (``nn.LayerNorm``), "rms" (``RMSNorm``) or "none" (``nn.Identity``, for the
    norm-free toy models of circuits work); eps defaults to 1e-6.

    timm ViTs use LayerNorm eps 1e-6; open_clip / OpenAI CLIP use 1e-5, so pass eps=1e-5 to load those.
    """
    eps = 1e-6 if eps is None else eps
    if kind == "layer":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "rms":
        return RMSNorm(dim, eps=eps)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; valid norms: {', '.join(NORMS)}")
