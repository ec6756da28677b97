"""Multi-head attention (self or cross) over (B, N, C) tokens through ``F.scaled_dot_product_attention``.

Weight layout matches timm's ViT ``attn.qkv`` / ``attn.proj`` and ``nn.MultiheadAttention``'s ``in_proj_weight`` /
``out_proj`` (rows ordered [q; k; v]), so pretrained weights load by copying tensors.

On the CPU in bf16/fp16, :func:`attention` computes softmax(q k^T / sqrt(d)) v with explicit matmuls instead: PyTorch's
fused CPU kernel runs reduced precision 4-6x slower than these matmuls for training-sized sequences (forward plus
backward of 64 x 4 heads x 65 tokens x 64 dims on 2 cores: 54.6 ms fused against 8.9 ms composite; fp32 fused 24.4 ms).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .hooks import HookPoint


def composite_is_faster(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether explicit matmuls beat ``F.scaled_dot_product_attention`` for tensors of this device and dtype: on the
    CPU in bf16/fp16 (see the module docstring)."""
    return device.type == "cpu" and dtype in (torch.bfloat16, torch.float16)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    causal: bool = False,
    composite: bool | None = None,
) -> Tensor:
    """softmax(q k^T / sqrt(D) + attn_mask) v over (B, H, N, D) queries and (B, H, M, D) keys and values.

    ``F.scaled_dot_product_attention`` unless ``composite`` (default: on the CPU in bf16/fp16, where it is faster),
    which uses two matmuls and a softmax with the same semantics: ``attn_mask`` is additive (float) or True where
    attention is allowed (bool), ``causal`` lets query i see keys j <= i. In bf16 the softmax is accumulated in
    fp32 and its output rounded to bf16 before the second matmul, as fused kernels do with their probability tiles;
    what the backward keeps is that (B, H, N, M) bf16 tensor, the memory cost of this path.
    """
    if composite is None:
        composite = composite_is_faster(q.device, q.dtype)
    if not composite:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=causal)
    # In place after the matmul: its backward needs q and k, not its output, so no (B, H, N, M) copy is kept.
    scores = (q @ k.transpose(-2, -1)).mul_(q.shape[-1] ** -0.5)  # (B, H, N, M)
    if causal:
        N, M = scores.shape[-2:]
        scores.masked_fill_(torch.ones(N, M, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, float("-inf"))  # out of place: the mask may broadcast it up
    elif attn_mask is not None:
        scores = scores + attn_mask
    probs = scores.softmax(dim=-1)  # (B, H, N, M); PyTorch accumulates a bf16/fp16 softmax in fp32
    if dropout_p > 0.0:
        probs = F.dropout(probs, dropout_p)
    return probs @ v  # (B, H, N, D)


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

    Hook points (:mod:`multimodal.nn.hooks`), shaped as TransformerLens's: ``hook_q``, ``hook_k``, ``hook_v`` and
    ``hook_z`` (B, N|M, H, D); ``hook_attn_scores`` (scaled, masked with -inf) and ``hook_pattern`` (B, H, N, M),
    computed explicitly only while hooked (the fused kernel never forms them); ``hook_result`` (B, N, H, C), each
    head's output through its slice of ``proj`` (bias excluded), only while hooked.
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
        for name in ("q", "k", "v", "attn_scores", "pattern", "z", "result"):
            setattr(self, f"hook_{name}", HookPoint())

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
        if self.hook_q.active() or self.hook_k.active() or self.hook_v.active():
            q, k, v = (
                hook(t.transpose(1, 2)).transpose(1, 2)  # hooks see (B, N|M, H, D)
                for hook, t in ((self.hook_q, q), (self.hook_k, k), (self.hook_v, v))
            )
        B, _, N, _ = q.shape
        M = k.shape[2]
        dropout_p = self.attn_drop if self.training else 0.0

        if self.hook_attn_scores.active() or self.hook_pattern.active():
            out = self._hooked_attention(q, k, v, key_padding_mask, attn_bias, causal, dropout_p)
        elif key_padding_mask is None and attn_bias is None:
            out = attention(q, k, v, dropout_p=dropout_p, causal=causal)  # (B, H, N, D)
        else:
            mask = self._additive_mask(q, B, N, M, key_padding_mask, attn_bias, causal)  # (B|1, H|1, N, M)
            empty = torch.isneginf(mask).all(dim=-1, keepdim=True)  # (B|1, H|1, N, 1) rows with no visible key
            mask = mask.masked_fill(empty, 0.0)  # keep softmax finite; the row is zeroed below
            out = attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)  # (B, H, N, D)
            out = out.masked_fill(empty, 0.0)

        z = self.hook_z(out.transpose(1, 2))  # (B, N, H, D)
        if self.hook_result.active():
            w_o = self.proj.weight.view(self.dim, self.heads, self.head_dim)  # (C, H, D): head h's slice of proj
            result = self.hook_result(torch.einsum("bnhd,chd->bnhc", z, w_o.to(z.dtype)))  # (B, N, H, C)
            out = result.sum(2) + self.proj.bias.to(result.dtype) if self.proj.bias is not None else result.sum(2)
            return self.proj_drop(out)
        return self.proj_drop(self.proj(z.reshape(B, N, self.dim)))  # (B, N, C)

    def _hooked_attention(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        key_padding_mask: Tensor | None,
        attn_bias: Tensor | None,
        causal: bool,
        dropout_p: float,
    ) -> Tensor:
        """softmax(q k^T / sqrt(D) + mask) v with the scores and the pattern passed through their hook points; rows
        with no visible key attend to nothing (pattern and output zero), as in the fused path."""
        B, _, N, _ = q.shape
        mask = self._additive_mask(q, B, N, k.shape[2], key_padding_mask, attn_bias, causal)  # (B|1, H|1, N, M)
        scores = self.hook_attn_scores((q @ k.transpose(-2, -1)) * self.head_dim**-0.5 + mask)  # (B, H, N, M)
        empty = torch.isneginf(scores).all(dim=-1, keepdim=True)  # (B, H, N, 1)
        pattern = self.hook_pattern(scores.masked_fill(empty, 0.0).softmax(dim=-1).masked_fill(empty, 0.0))
        return F.dropout(pattern, dropout_p) @ v  # (B, H, N, D)

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
