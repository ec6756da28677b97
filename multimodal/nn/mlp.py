"""Feed-forward layers of a transformer block: the classic two-layer ``Mlp``, the gated ``SwiGLU``, ``QuickGELU``.

``Mlp`` uses timm's submodule names (``fc1``, ``act``, ``fc2``) so timm ViT weights load by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU OpenAI's CLIP was trained with: ``x * sigmoid(1.702 * x)``."""

    def forward(self, x: Tensor) -> Tensor:
        """(...) -> (...)."""
        return x * torch.sigmoid(1.702 * x)


ACT_LAYERS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "quick_gelu": QuickGELU}


def get_act_layer(name: str) -> type[nn.Module]:
    """Activation class by name: "gelu" (exact, ``nn.GELU``) or "quick_gelu" (OpenAI CLIP's ``QuickGELU``)."""
    if name not in ACT_LAYERS:
        raise ValueError(f"unknown activation {name!r}; valid activations: {', '.join(ACT_LAYERS)}")
    return ACT_LAYERS[name]


class Mlp(nn.Module):
    """Two-layer MLP: fc1 -> act -> dropout -> fc2 -> dropout, over the last dim."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        *,
        act_layer: type[nn.Module] = nn.GELU,
        bias: bool = True,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim < 1 or hidden_dim < 1:
            raise ValueError(f"dim and hidden_dim must be positive, got dim={dim}, hidden_dim={hidden_dim}")
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        """(..., dim) -> (..., dim)."""
        x = self.drop1(self.act(self.fc1(x)))  # (..., hidden)
        return self.drop2(self.fc2(x))


class SwiGLU(nn.Module):
    """Gated MLP (Shazeer 2020): fc2(silu(gate) * value), with [gate; value] from one fused ``fc1``.

    ``fc1`` maps dim -> 2 * hidden_dim; the first hidden_dim outputs are the gate, the last the value. For the
    parameter count of an ``Mlp`` with hidden 4 * dim, use hidden_dim = 8/3 * dim (as LLaMA does).
    """

    def __init__(self, dim: int, hidden_dim: int, *, bias: bool = False, drop: float = 0.0) -> None:
        super().__init__()
        if dim < 1 or hidden_dim < 1:
            raise ValueError(f"dim and hidden_dim must be positive, got dim={dim}, hidden_dim={hidden_dim}")
        self.fc1 = nn.Linear(dim, 2 * hidden_dim, bias=bias)
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        """(..., dim) -> (..., dim)."""
        gate, value = self.fc1(x).chunk(2, dim=-1)  # 2 x (..., hidden)
        x = self.drop1(F.silu(gate) * value)
        return self.drop2(self.fc2(x))
