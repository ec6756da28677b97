"""Per-head attention weights of a backbone :class:`~multimodal.nn.Transformer`, and its QK and OV circuits.

Shapes and conventions are TransformerLens's (row vectors, ``q = x @ W_Q + b_Q``): W_Q, W_K, W_V (L, H, C, D) and
W_O (L, H, D, C), read out of each block's fused ``qkv`` and its ``proj``. With ``fold_norm`` (default) each block's
pre-attention LayerNorm or RMSNorm scale is folded into W_Q, W_K, W_V (and a LayerNorm's shift into their biases),
so the heads read the normalised stream ``(x - mean) / std`` (RMSNorm: ``x / rms``) directly:

    q[l, h] = normalise(x) @ W_Q[l, h] + b_Q[l, h]        attn_out[l] = sum_h z[l, h] @ W_O[l, h] + b_O[l]

``QK = W_Q W_K^T`` and ``OV = W_V W_O`` are (L, H, C, C) :class:`FactoredMatrix` es of rank <= D.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from ..nn import RMSNorm, Transformer
from .factored import FactoredMatrix

__all__ = ["HeadWeights", "head_weights"]


@dataclasses.dataclass(frozen=True)
class HeadWeights:
    """Every self-attention head of a transformer, as separate matrices (float32, detached)."""

    W_Q: Tensor  # (L, H, C, D)
    W_K: Tensor  # (L, H, C, D)
    W_V: Tensor  # (L, H, C, D)
    W_O: Tensor  # (L, H, D, C)
    b_Q: Tensor  # (L, H, D)
    b_K: Tensor  # (L, H, D)
    b_V: Tensor  # (L, H, D)
    b_O: Tensor  # (L, C)
    folded: bool  # whether the norm scales (and LayerNorm shifts) are inside W_Q, W_K, W_V and their biases

    @property
    def layers(self) -> int:
        return self.W_Q.shape[0]

    @property
    def heads(self) -> int:
        return self.W_Q.shape[1]

    @property
    def QK(self) -> FactoredMatrix:
        """W_Q W_K^T per head, (L, H, C, C): the bilinear form of query-side by key-side residual vectors."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """W_V W_O per head, (L, H, C, C): what a head writes to the residual stream for an attended vector."""
        return FactoredMatrix(self.W_V, self.W_O)


def _blocks(model: nn.Module) -> nn.ModuleList:
    if isinstance(model, Transformer):
        return model.blocks
    found = [m for m in model.modules() if isinstance(m, Transformer)]
    if len(found) != 1:
        raise ValueError(
            f"{type(model).__name__} holds {len(found)} backbone Transformers; pass the one to read "
            "(e.g. clip.text.transformer or clip.visual.transformer)"
        )
    return found[0].blocks


def head_weights(model: nn.Module, *, fold_norm: bool = True) -> HeadWeights:
    """The per-head weights of ``model`` (a :class:`~multimodal.nn.Transformer`, or a module holding exactly one)."""
    rows: dict[str, list[Tensor]] = {k: [] for k in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")}
    for i, block in enumerate(_blocks(model)):
        attn = block.attn
        C, H, D = attn.dim, attn.heads, attn.head_dim
        weight = attn.qkv.weight.detach().float()  # (3C, C): rows [q; k; v], out = x @ weight.T
        bias = attn.qkv.bias.detach().float() if attn.qkv.bias is not None else torch.zeros(3 * C)
        if fold_norm and not isinstance(block.norm1, nn.Identity):  # no pre-norm (attention-only toys): none to fold
            norm = block.norm1
            if not isinstance(norm, nn.LayerNorm | RMSNorm):
                raise ValueError(
                    f"block {i}'s norm1 is {type(norm).__name__}; fold_norm handles LayerNorm and RMSNorm"
                )
            scale = norm.weight.detach().float() if norm.weight is not None else torch.ones(C)
            shift = getattr(norm, "bias", None)
            if shift is not None:  # W (x_hat * g + s) + b = (W * g) x_hat + (W s + b)
                bias = bias + weight @ shift.detach().float()
            weight = weight * scale  # scales column c (input channel c) by g_c
        w_q, w_k, w_v = weight.view(3, H, D, C).transpose(-2, -1).unbind(0)  # 3 x (H, C, D)
        b_q, b_k, b_v = bias.view(3, H, D).unbind(0)  # 3 x (H, D)
        proj = attn.proj.weight.detach().float()  # (C, C): out = z_flat @ proj.T, z_flat[h * D + d]
        rows["W_O"].append(proj.view(C, H, D).permute(1, 2, 0))  # (H, D, C)
        rows["b_O"].append(attn.proj.bias.detach().float() if attn.proj.bias is not None else torch.zeros(C))
        for key, value in (("W_Q", w_q), ("W_K", w_k), ("W_V", w_v), ("b_Q", b_q), ("b_K", b_k), ("b_V", b_v)):
            rows[key].append(value)
    return HeadWeights(**{k: torch.stack(v).contiguous() for k, v in rows.items()}, folded=fold_norm)
