"""Pre-norm transformer block: self-attention, optional cross-attention, and a dense or mixture-of-experts MLP.

Submodule names follow timm's ViT ``Block`` (norm1, attn, ls1, norm2, mlp, ls2), so a timm ViT block's
state dict loads with ``load_state_dict``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .attention import Attention
from .demix import DEMixMlp
from .drop_path import DropPath
from .hooks import HookPoint
from .mlp import Mlp, SwiGLU
from .moe import MoEMlp
from .norm import build_norm
from .task_moe import TaskMoEMlp

ROUTED = {"moe": MoEMlp, "task_moe": TaskMoEMlp, "demix": DEMixMlp}  # mlp name -> class, built with the moe kwargs
MLPS = ("gelu", "swiglu", *ROUTED, "none")


class LayerScale(nn.Module):
    """Per-channel learnable scale of a residual branch (Touvron et al. 2021, CaiT), initialised to init_value."""

    def __init__(self, dim: int, init_value: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        """(..., dim) -> (..., dim)."""
        return x * self.gamma


def build_mlp(
    kind: str,
    dim: int,
    hidden_dim: int,
    *,
    act_layer: type[nn.Module] = nn.GELU,
    drop: float = 0.0,
    moe: dict[str, Any] | None = None,
) -> nn.Module | None:
    """MLP by name: "gelu" (``Mlp``), "swiglu" (``SwiGLU``), or experts built with the ``moe`` kwargs: "moe"
    (token-routed ``MoEMlp``), "task_moe" (task-routed ``TaskMoEMlp``), "demix" (one expert per task,
    ``DEMixMlp``); "none" is no MLP at all (None), for attention-only transformers."""
    if kind not in MLPS:
        raise ValueError(f"unknown mlp {kind!r}; valid mlps: {', '.join(MLPS)}")
    if (kind in ROUTED) != (moe is not None):
        raise ValueError(
            f"mlp={kind!r}: the experts' mlps ({', '.join(ROUTED)}) need their kwargs, e.g. moe=dict(num_experts=4) "
            f"or moe=dict(num_tasks=6), and only they take moe; got moe={moe!r}"
        )
    if kind == "none":
        return None
    if kind == "gelu":
        return Mlp(dim, hidden_dim, act_layer=act_layer, drop=drop)
    if kind == "swiglu":
        return SwiGLU(dim, hidden_dim, drop=drop)
    reserved = {"dim", "hidden_dim"} & moe.keys()
    if reserved:
        raise ValueError(f"moe kwargs must not set {sorted(reserved)}; they come from dim and mlp_ratio")
    return ROUTED[kind](dim, hidden_dim, drop=drop, **moe)


class Block(nn.Module):
    """Pre-norm residual transformer block.

    x = x + drop_path(ls1(attn(norm1(x))))
    x = x + drop_path(ls_cross(cross_attn(norm_cross(x), context)))   # only with cross_attention=True
    x = x + drop_path(ls2(mlp(norm2(x))))                           # not with mlp="none" (attention only)

    The MLP hidden size is int(dim * mlp_ratio) for every kind (for SwiGLU at the parameter count of a 4x GELU MLP,
    use mlp_ratio=8/3). ``aux_loss`` is the experts' load-balancing loss of the last forward (zero for dense MLPs).

    Hook points on the residual stream, named as TransformerLens's: ``hook_resid_pre`` (the input),
    ``hook_attn_out`` (the self-attention branch), ``hook_cross_attn_out``, ``hook_resid_mid`` (the MLP's input
    stream), ``hook_mlp_out`` and ``hook_resid_post`` (the output); branches after layer scale and drop path.
    """

    def __init__(
        self,
        dim: int,
        *,
        heads: int,
        mlp_ratio: float = 4.0,
        mlp: str = "gelu",
        moe: dict[str, Any] | None = None,
        norm: str = "layer",
        norm_eps: float | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        qkv_bias: bool = True,
        cross_attention: bool = False,
        context_dim: int | None = None,
        layer_scale_init: float | None = None,
        drop_path: float = 0.0,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if context_dim is not None and not cross_attention:
            raise ValueError("context_dim only applies with cross_attention=True")
        self.cross_attention = cross_attention

        def layer_scale() -> nn.Module:
            return nn.Identity() if layer_scale_init is None else LayerScale(dim, layer_scale_init)

        self.norm1 = build_norm(norm, dim, eps=norm_eps)
        self.attn = Attention(dim, heads=heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.ls1 = layer_scale()
        self.drop_path1 = DropPath(drop_path)
        if cross_attention:
            self.norm_cross = build_norm(norm, dim, eps=norm_eps)
            self.cross_attn = Attention(
                dim,
                heads=heads,
                qkv_bias=qkv_bias,
                cross=True,
                context_dim=context_dim,
                attn_drop=attn_drop,
                proj_drop=proj_drop,
            )
            self.ls_cross = layer_scale()
            self.drop_path_cross = DropPath(drop_path)
        if mlp != "none":  # the order of creation is the parameters' order (optimizer state, checkpoints)
            self.norm2 = build_norm(norm, dim, eps=norm_eps)
        self.mlp = build_mlp(mlp, dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, moe=moe)
        if self.mlp is not None:
            self.ls2 = layer_scale()
            self.drop_path2 = DropPath(drop_path)
        points = ("resid_pre", "attn_out", *(("cross_attn_out",) if cross_attention else ()), "resid_mid")
        for name in (*points, *(("mlp_out",) if self.mlp is not None else ()), "resid_post"):
            setattr(self, f"hook_{name}", HookPoint())

    @property
    def aux_loss(self) -> Tensor:
        """The experts' load-balancing loss of the last forward; a zero scalar for dense MLPs."""
        if isinstance(self.mlp, tuple(ROUTED.values())):
            return self.mlp.aux_loss
        return torch.zeros((), device=self.attn.proj.weight.device)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        key_padding_mask: Tensor | None = None,
        context_padding_mask: Tensor | None = None,
        attn_bias: Tensor | None = None,
        causal: bool = False,
        token_ids: Tensor | None = None,
        task_ids: Tensor | None = None,
        task_weights: Tensor | None = None,
    ) -> Tensor:
        """x (B, N, C), context (B, M, C_ctx) -> (B, N, C).

        key_padding_mask (B, N) / context_padding_mask (B, M) are True at padding; attn_bias and causal apply to
        self-attention. The rest route experts and are ignored by dense MLPs: token_ids (B, N) feed hash-routed
        MoE; task_ids (B,) task MoE and DEMix; task_weights (B, tasks) mix DEMix's experts when tasks are unknown.
        """
        if context is not None and not self.cross_attention:
            raise ValueError(
                "context was given to a block without cross attention; build it with cross_attention=True"
            )
        if context_padding_mask is not None and context is None:
            raise ValueError("context_padding_mask was given without a context")
        x = self.hook_resid_pre(x)
        h = self.attn(self.norm1(x), key_padding_mask=key_padding_mask, attn_bias=attn_bias, causal=causal)
        x = x + self.hook_attn_out(self.drop_path1(self.ls1(h)))
        if self.cross_attention:
            if context is None:
                raise ValueError("this block has cross attention and needs context of shape (B, M, context_dim)")
            h = self.cross_attn(self.norm_cross(x), context, key_padding_mask=context_padding_mask)
            x = x + self.hook_cross_attn_out(self.drop_path_cross(self.ls_cross(h)))
        x = self.hook_resid_mid(x)
        if self.mlp is None:
            return self.hook_resid_post(x)
        h = self.norm2(x)
        if isinstance(self.mlp, MoEMlp):
            h = self.mlp(h, token_ids=token_ids)
        elif isinstance(self.mlp, (TaskMoEMlp, DEMixMlp)):
            h = self.mlp(h, task_ids=task_ids, task_weights=task_weights)
        else:
            h = self.mlp(h)
        return self.hook_resid_post(x + self.hook_mlp_out(self.drop_path2(self.ls2(h))))
