"""A stack of pre-norm transformer blocks: the backbone every model of the suite is built from."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .block import ROUTED, Block


class Transformer(nn.Module):
    """``depth`` pre-norm :class:`Block` s applied in sequence to (B, N, dim) tokens, with no final norm.

    Stochastic depth grows linearly from 0 at the first block to ``drop_path_rate`` at the last (as timm).

    With experts (``mlp="moe"``, ``"task_moe"`` or ``"demix"``, built with the ``moe`` kwargs), block i (0-based)
    uses them when ``(i + 1) % moe_every == 0``, i.e. every moe_every-th block counting from the first, ending each
    group: moe_every=1 makes every block MoE, moe_every=2 blocks 1, 3, 5, ... (Switch / GShard alternate dense and
    sparse layers this way). The other blocks use a dense MLP of the experts' kind (``moe["expert"]``, "gelu" by
    default).

    ``aux_loss`` sums the experts' load-balancing losses of the last forward; add it (times a weight) to the loss.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        *,
        heads: int,
        mlp_ratio: float = 4.0,
        mlp: str = "gelu",
        moe: dict[str, Any] | None = None,
        moe_every: int = 1,
        norm: str = "layer",
        norm_eps: float | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        qkv_bias: bool = True,
        cross_attention: bool = False,
        context_dim: int | None = None,
        layer_scale_init: float | None = None,
        drop_path_rate: float = 0.0,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if moe_every < 1:
            raise ValueError(f"moe_every must be >= 1, got {moe_every}")
        if moe_every > 1 and mlp not in ROUTED:
            raise ValueError(f"moe_every={moe_every} only applies with experts ({', '.join(ROUTED)}), got {mlp!r}")
        if mlp in ROUTED and moe_every > depth:
            raise ValueError(f"moe_every={moe_every} > depth={depth} leaves no MoE block; use moe_every <= depth")
        self.dim = dim
        self.depth = depth
        self.grad_checkpointing = grad_checkpointing

        dense_mlp = (moe or {}).get("expert", "gelu")
        drop_rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear, as timm
        self.blocks = nn.ModuleList()
        for i, rate in enumerate(drop_rates):
            is_moe = mlp in ROUTED and (i + 1) % moe_every == 0
            block_mlp = mlp if mlp not in ROUTED or is_moe else dense_mlp
            self.blocks.append(
                Block(
                    dim,
                    heads=heads,
                    mlp_ratio=mlp_ratio,
                    mlp=block_mlp,
                    moe=moe if is_moe else None,
                    norm=norm,
                    norm_eps=norm_eps,
                    act_layer=act_layer,
                    qkv_bias=qkv_bias,
                    cross_attention=cross_attention,
                    context_dim=context_dim,
                    layer_scale_init=layer_scale_init,
                    drop_path=rate,
                    attn_drop=attn_drop,
                    proj_drop=proj_drop,
                )
            )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward to save memory (only while training with grad enabled)."""
        self.grad_checkpointing = enable

    @property
    def aux_loss(self) -> Tensor:
        """Sum of the blocks' load-balancing losses from the last forward (zero scalar without experts)."""
        losses = [blk.aux_loss for blk in self.blocks if isinstance(blk.mlp, tuple(ROUTED.values()))]
        if not losses:
            return torch.zeros((), device=self.blocks[0].attn.proj.weight.device)
        return torch.stack(losses).sum()

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
        """x (B, N, dim), context (B, M, context_dim) -> (B, N, dim); arguments as in :meth:`Block.forward`."""
        kwargs = dict(
            key_padding_mask=key_padding_mask,
            context_padding_mask=context_padding_mask,
            attn_bias=attn_bias,
            causal=causal,
            token_ids=token_ids,
            task_ids=task_ids,
            task_weights=task_weights,
        )
        use_checkpoint = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for blk in self.blocks:
            if use_checkpoint:
                x = checkpoint(blk, x, context, use_reentrant=False, **kwargs)
            else:
                x = blk(x, context, **kwargs)
        return x
