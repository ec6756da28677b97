"""Multi-head attention (self or cross) over (B, N, C) tokens through ``F.scaled_dot_product_attention``.

Weight layout matches timm's ViT ``attn.qkv`` / ``attn.proj`` and ``nn.MultiheadAttention``'s ``in_proj_weight`` /
``out_proj`` (rows ordered [q; k; v]), so pretrained weights load by copying tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head attention over (B, N, C) tokens, fused through ``scaled_dot_product_attention``.

    Self-attention projects q, k, v with one fused ``qkv`` linear; cross-attention (``cross=True``) projects queries
    from ``x`` with ``q`` and keys/values from ``context`` with ``kv``.

    Masking (all optional, combinable):
        * ``key_padding_mask``: bool (B, M), True marks padding keys to ignore (``nn.MultiheadAttention`` convention).
        * ``attn_bias``: float additive bias broadcastable to (B, H, N, M), e.g. relative position bias.
        * ``causal``: query i attends to keys j <= i (self-attention only).

    A query row whose keys are all masked attends to nothing: its attention output is zero (before the output
    projection, so the layer returns ``proj.bias`` there) instead of NaN, and no gradient flows through that row.
    """

    def __init__(
        self,
        dim: int,
        *,
        heads: int,
        qkv_bias: bool = True,
        cross: bool = False,
        context_dim: int | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if heads < 1 or dim % heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads}); pick a head count that divides dim")
        if context_dim is not None and not cross:
            raise ValueError("context_dim only applies to cross attention; pass cross=True or drop context_dim")
        self.dim = dim
        self.heads = heads
        self.head_dim = dim // heads
        self.cross = cross
        self.context_dim = (context_dim or dim) if cross else None
        if cross:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(self.context_dim, 2 * dim, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        key_padding_mask: Tensor | None = None,
        attn_bias: Tensor | None = None,
        causal: bool = False,
    ) -> Tensor:
        """Attend from ``x`` (B, N, C) to itself or to ``context`` (B, M, C_ctx); returns (B, N, C)."""
        q, k, v = self._project(x, context, causal)  # 3 x (B, H, N|M, D)
        B, _, N, _ = q.shape
        M = k.shape[2]
        dropout_p = self.attn_drop if self.training else 0.0

        if key_padding_mask is None and attn_bias is None:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)  # (B, H, N, D)
        else:
            mask = self._additive_mask(q, B, N, M, key_padding_mask, attn_bias, causal)  # (B|1, H|1, N, M)
            empty = torch.isneginf(mask).all(dim=-1, keepdim=True)  # (B|1, H|1, N, 1) rows with no visible key
            mask = mask.masked_fill(empty, 0.0)  # keep softmax finite; the row is zeroed below
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)  # (B, H, N, D)
            out = out.masked_fill(empty, 0.0)

        out = out.transpose(1, 2).reshape(B, N, self.dim)  # (B, N, C)
        return self.proj_drop(self.proj(out))

    def _project(self, x: Tensor, context: Tensor | None, causal: bool) -> tuple[Tensor, Tensor, Tensor]:
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"expected x of shape (B, N, {self.dim}), got {tuple(x.shape)}")
        B, N, _ = x.shape
        H, D = self.heads, self.head_dim
        if not self.cross:
            if context is not None:
                raise ValueError("context was given to a self-attention layer; build it with cross=True")
            qkv = self.qkv(x).reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4)  # (3, B, H, N, D)
            return qkv.unbind(0)
        if causal:
            raise ValueError("causal=True is only defined for self-attention, not cross attention")
        if context is None:
            raise ValueError("cross attention needs a context tensor of shape (B, M, context_dim)")
        if context.ndim != 3 or context.shape[0] != B or context.shape[-1] != self.context_dim:
            raise ValueError(
                f"expected context of shape ({B}, M, {self.context_dim}) to match x {tuple(x.shape)}, "
                f"got {tuple(context.shape)}"
            )
        M = context.shape[1]
        q = self.q(x).reshape(B, N, H, D).transpose(1, 2)  # (B, H, N, D)
        kv = self.kv(context).reshape(B, M, 2, H, D).permute(2, 0, 3, 1, 4)  # (2, B, H, M, D)
        k, v = kv.unbind(0)
        return q, k, v

    def _additive_mask(
        self,
        q: Tensor,
        B: int,
        N: int,
        M: int,
        key_padding_mask: Tensor | None,
        attn_bias: Tensor | None,
        causal: bool,
    ) -> Tensor:
        """One float mask (B|1, H|1, N, M): attn_bias plus -inf at padded keys and above the causal diagonal."""
        mask = q.new_zeros(1, 1, N, M)
        if attn_bias is not None:
            if not attn_bias.is_floating_point():
                raise ValueError(f"attn_bias must be a float tensor (additive bias), got dtype {attn_bias.dtype}")
            target = (B, self.heads, N, M)
            try:
                fits = attn_bias.ndim <= 4 and torch.broadcast_shapes(attn_bias.shape, target) == target
            except RuntimeError:
                fits = False
            if not fits:
                raise ValueError(
                    f"attn_bias of shape {tuple(attn_bias.shape)} does not broadcast to (B, H, N, M) = {target}"
                )
            mask = mask + attn_bias.to(q.dtype)  # (B|1, H|1, N, M)
        if key_padding_mask is not None:
            if key_padding_mask.dtype != torch.bool:
                raise ValueError(
                    f"key_padding_mask must be bool with True at padding keys, got dtype {key_padding_mask.dtype}"
                )
            if key_padding_mask.shape != (B, M):
                raise ValueError(
                    f"key_padding_mask must have shape (B, M) = {(B, M)} (one flag per key), "
                    f"got {tuple(key_padding_mask.shape)}"
                )
            mask = mask.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))  # (B, H|1, N, M)
        if causal:
            future = torch.ones(N, M, dtype=torch.bool, device=q.device).triu(1)  # (N, M) True above diagonal
            mask = mask.masked_fill(future, float("-inf"))
        return mask

    def extra_repr(self) -> str:
        kind = f"cross, context_dim={self.context_dim}" if self.cross else "self"
        return f"{self.dim}, heads={self.heads}, {kind}, attn_drop={self.attn_drop}"
