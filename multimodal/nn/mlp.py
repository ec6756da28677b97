"""Feed-forward layers of a transformer block: the classic two-layer ``Mlp``, the gated ``SwiGLU``, ``QuickGELU``.

``Mlp`` uses timm's submodule names (``fc1``, ``act``, ``fc2``) so timm ViT weights load by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .hooks import HookPoint


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


class _ActLinear(torch.autograd.Function):
    """``F.linear(act(h), weight, bias)`` that keeps only ``h`` for backward and recomputes ``act(h)`` there.

    Autograd would keep both the pre-activation (for the activation's backward) and the activation (for the linear's
    weight gradient): two (..., hidden) tensors, the largest activations of a transformer block. Recomputing the
    elementwise activation costs a few percent of the MLP's matmul time and saves one of them.
    """

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor | None, act: nn.Module) -> Tensor:
        ctx.save_for_backward(h, weight)
        ctx.act = act
        ctx.has_bias = bias is not None
        return F.linear(act(h), weight, bias)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        h, weight = ctx.saved_tensors
        with torch.enable_grad():
            leaf = h.detach().requires_grad_(ctx.needs_input_grad[0])
            a = ctx.act(leaf)  # (..., hidden)
        g = grad_out.reshape(-1, grad_out.shape[-1])  # (T, out)
        grad_h = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            (grad_h,) = torch.autograd.grad(a, leaf, grad_out @ weight)
        if ctx.needs_input_grad[1]:
            grad_w = g.T @ a.detach().reshape(-1, a.shape[-1])  # (out, hidden)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_h, grad_w, grad_b, None


def act_linear(h: Tensor, linear: nn.Linear, act: nn.Module) -> Tensor:
    """``linear(act(h))``, recomputing ``act(h)`` in backward instead of storing it (see :class:`_ActLinear`).

    Under autocast the operands are cast outside the autograd function, as ``nn.Linear`` would cast them, so the
    result and the gradients match ``linear(act(h))`` exactly.
    """
    weight, bias = linear.weight, linear.bias
    device = h.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        h, weight = h.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    with torch.autocast(device, enabled=False):
        return _ActLinear.apply(h, weight, bias, act)


class Mlp(nn.Module):
    """Two-layer MLP: fc1 -> act -> dropout -> fc2 -> dropout, over the last dim.

    When it trains without dropout between act and fc2, the activation is recomputed in backward rather than
    stored (:func:`act_linear`), saving a (..., hidden) tensor per layer at the same results. Hook points:
    ``hook_pre`` (fc1's output) and ``hook_post`` (the activation; formed whole while hooked).
    """

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
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        """(..., dim) -> (..., dim)."""
        h = self.hook_pre(self.fc1(x))  # (..., hidden)
        if torch.is_grad_enabled() and not (self.training and self.drop1.p > 0) and not self.hook_post.active():
            return self.drop2(act_linear(h, self.fc2, self.act))
        return self.drop2(self.fc2(self.drop1(self.hook_post(self.act(h)))))


class SwiGLU(nn.Module):
    """Gated MLP (Shazeer 2020): fc2(silu(gate) * value), with [gate; value] from one fused ``fc1``.

    ``fc1`` maps dim -> 2 * hidden_dim; the first hidden_dim outputs are the gate, the last the value. For the
    parameter count of an ``Mlp`` with hidden 4 * dim, use hidden_dim = 8/3 * dim (as LLaMA does). Hook points, as
    TransformerLens's gated MLP names them: ``hook_pre`` (the gate before its activation), ``hook_pre_linear`` (the
    value) and ``hook_post`` (silu(gate) * value, what ``fc2`` reads).
    """

    def __init__(self, dim: int, hidden_dim: int, *, bias: bool = False, drop: float = 0.0) -> None:
        super().__init__()
        if dim < 1 or hidden_dim < 1:
            raise ValueError(f"dim and hidden_dim must be positive, got dim={dim}, hidden_dim={hidden_dim}")
        self.fc1 = nn.Linear(dim, 2 * hidden_dim, bias=bias)
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)
        self.drop2 = nn.Dropout(drop)
        self.hook_pre, self.hook_pre_linear, self.hook_post = HookPoint(), HookPoint(), HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        """(..., dim) -> (..., dim)."""
        gate, value = self.fc1(x).chunk(2, dim=-1)  # 2 x (..., hidden)
        x = self.hook_post(F.silu(self.hook_pre(gate)) * self.hook_pre_linear(value))
        return self.drop2(self.fc2(self.drop1(x)))
