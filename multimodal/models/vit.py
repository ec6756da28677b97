"""Vision Transformer (Dosovitskiy et al. 2020) on the shared backbone.

Parameter names follow timm's ``VisionTransformer`` (``cls_token``, ``pos_embed``, ``patch_embed.proj``,
``norm``, ``head``, and inside each block ``norm1``, ``attn.qkv``, ``mlp.fc1`` ...); the blocks live in the shared
``Transformer`` as ``transformer.blocks.N`` where timm has ``blocks.N``, so timm weights load by that one rename.

The same class is CLIP's image tower (see ``clip.py``): ``pre_norm`` is open_clip's ``ln_pre``, ``norm`` its
``ln_post``, and a bias-free ``head`` of ``num_classes = embed_dim`` outputs its ``proj``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..config import Config
from ..nn import Attention, ConvStem, PatchEmbed, Transformer, build_norm, get_act_layer, sincos_2d_embedding
from .registry import register_model

__all__ = ["AttentionPool", "VisionTransformer", "VitConfig"]


@dataclasses.dataclass(frozen=True)
class VitConfig(Config):
    """Architecture of a :class:`VisionTransformer`."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    stem: Literal["patch", "conv"] = "patch"  # conv: Xiao et al. 2021's convolutional stem (ViT_C)
    stem_width: int = 32
    patch_bias: bool = True  # False for open_clip / OpenAI CLIP, whose conv1 has no bias (patch stem only)
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    mlp: Literal["gelu", "swiglu", "moe"] = "gelu"
    moe: dict[str, Any] | None = None
    norm: Literal["layer", "rms"] = "layer"
    norm_eps: float = 1e-6  # timm's ViTs; open_clip / OpenAI CLIP use 1e-5
    act: Literal["gelu", "quick_gelu"] = "gelu"  # quick_gelu: OpenAI CLIP's x * sigmoid(1.702 x)
    qkv_bias: bool = True
    class_token: bool = True
    pool: Literal["token", "mean", "attn"] = "token"  # attn: learned queries attend to the tokens (AttentionPool)
    pool_queries: int = 1  # queries of pool="attn", averaged into one vector
    pos_embed: Literal["learned", "sincos"] = "learned"
    pre_norm: bool = False  # CLIP's ln_pre
    head_bias: bool = True  # False for CLIP's image projection
    layer_scale_init: float | None = None
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        if self.pool == "token" and not self.class_token:
            raise ValueError("pool='token' needs class_token=True; use pool='mean' without a class token")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = no head), got {self.num_classes}")
        if self.stem == "conv" and not self.patch_bias:
            raise ValueError("patch_bias=False applies to the patch stem; the conv stem's 1x1 projection keeps a bias")
        if self.pool_queries < 1:
            raise ValueError(f"pool_queries must be >= 1, got {self.pool_queries}")
        if self.pool_queries != 1 and self.pool != "attn":
            raise ValueError(f"pool_queries={self.pool_queries} only applies with pool='attn', got pool={self.pool!r}")


class AttentionPool(nn.Module):
    """Pool (B, N, dim) tokens to (B, dim): learned queries cross-attend to the tokens, then a norm.

    The multihead attention pooling of SigLIP's MAP head (Zhai et al. 2023) and of the Set Transformer's PMA
    (Lee et al. 2019), without their extra MLP: ``norm(mean_q(attn(query_q, tokens)))``. With one query (the default)
    the mean is the identity. There is no position information in the pooling itself: the output is invariant to the
    order of the tokens, which carry their positions from the position embedding.
    """

    def __init__(
        self,
        dim: int,
        *,
        heads: int,
        queries: int = 1,
        qkv_bias: bool = True,
        norm: str = "layer",
        norm_eps: float | None = None,
    ) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, queries, dim))
        self.attn = Attention(dim, heads=heads, qkv_bias=qkv_bias, cross=True)
        self.norm = build_norm(norm, dim, eps=norm_eps)
        nn.init.trunc_normal_(self.query, std=dim**-0.5)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, dim) -> (B, dim)."""
        query = self.query.expand(x.shape[0], -1, -1).to(x.dtype)  # (B, Q, dim)
        return self.norm(self.attn(query, x).mean(dim=1))  # (B, Q, dim) -> (B, dim)


class VisionTransformer(nn.Module):
    """ViT image classifier: patch embedding, class token, position embedding, transformer, head."""

    def __init__(self, cfg: VitConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.stem == "conv":
            self.patch_embed = ConvStem(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.dim, width=cfg.stem_width)
        else:
            self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.dim, bias=cfg.patch_bias)
        self.num_prefix_tokens = 1 if cfg.class_token else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if cfg.class_token else None
        num_pos = self.patch_embed.num_patches + self.num_prefix_tokens
        if cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.randn(1, num_pos, cfg.dim) * 0.02)
        else:
            grid_h, grid_w = self.patch_embed.grid_size
            table = sincos_2d_embedding(grid_h, grid_w, cfg.dim)  # (N, dim)
            table = torch.cat([torch.zeros(self.num_prefix_tokens, cfg.dim), table])
            self.register_buffer("pos_embed", table.unsqueeze(0), persistent=False)
        self.norm_pre = build_norm(cfg.norm, cfg.dim, eps=cfg.norm_eps) if cfg.pre_norm else nn.Identity()
        self.transformer = Transformer(
            cfg.dim,
            cfg.depth,
            heads=cfg.heads,
            mlp_ratio=cfg.mlp_ratio,
            mlp=cfg.mlp,
            moe=cfg.moe,
            norm=cfg.norm,
            norm_eps=cfg.norm_eps,
            act_layer=get_act_layer(cfg.act),
            qkv_bias=cfg.qkv_bias,
            layer_scale_init=cfg.layer_scale_init,
            drop_path_rate=cfg.drop_path_rate,
            attn_drop=cfg.attn_drop_rate,
            proj_drop=cfg.drop_rate,
            grad_checkpointing=cfg.grad_checkpointing,
        )
        self.norm = build_norm(cfg.norm, cfg.dim, eps=cfg.norm_eps)
        self.attn_pool = None
        if cfg.pool == "attn":
            self.attn_pool = AttentionPool(
                cfg.dim,
                heads=cfg.heads,
                queries=cfg.pool_queries,
                qkv_bias=cfg.qkv_bias,
                norm=cfg.norm,
                norm_eps=cfg.norm_eps,
            )
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(cfg.dim, cfg.num_classes, bias=cfg.head_bias) if cfg.num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d) and name == "patch_embed.proj":
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                nn.init.trunc_normal_(m.weight, std=1 / math.sqrt(fan_in))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if isinstance(self.head, nn.Linear):
            nn.init.zeros_(self.head.weight)

    @property
    def num_features(self) -> int:
        return self.cfg.dim

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay besides norms and biases."""
        names = {"pos_embed", "cls_token"}
        if self.attn_pool is not None:
            names.add("attn_pool.query")
        return names

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.set_grad_checkpointing(enable)

    def forward_features(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) to tokens (B, prefix + N, dim), normed unless pooling by mean.

        Token pooling norms every token and then takes the class token, as timm and open_clip (whose ``ln_post``
        runs before its ``tok`` pooling); attention pooling attends to the normed tokens, as SigLIP's MAP head.
        """
        x = self.patch_embed(x)  # (B, N, dim)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + N, dim)
        x = x + self.pos_embed.to(x.dtype)
        x = self.norm_pre(x)
        x = self.transformer(x)
        return x if self.cfg.pool == "mean" else self.norm(x)  # mean pooling norms after pooling, as timm

    def pool(self, x: Tensor) -> Tensor:
        """Tokens (B, T, dim) from ``forward_features`` to one normed vector per image (B, dim)."""
        if self.cfg.pool == "token":
            return x[:, 0]
        if self.attn_pool is not None:
            return self.attn_pool(x)  # (B, dim), over all tokens
        return self.norm(x[:, self.num_prefix_tokens :].mean(dim=1))

    def forward_head(self, x: Tensor, *, pre_logits: bool = False) -> Tensor:
        """Tokens (B, T, dim) to logits (B, num_classes), or pooled features with ``pre_logits``."""
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> logits (B, num_classes), or pooled features (B, dim) without a head."""
        return self.forward_head(self.forward_features(x))

    @property
    def aux_loss(self) -> Tensor:
        """Mixture-of-experts load-balancing loss of the last forward (zero for dense MLPs)."""
        return self.transformer.aux_loss


def _vit(preset: VitConfig, overrides: dict[str, Any]) -> VisionTransformer:
    return VisionTransformer(preset.replace(**overrides))


@register_model
def vit_nano_patch4_32(**overrides: Any) -> VisionTransformer:
    """A 0.7M-parameter ViT for 32x32 images (shapes, digits, CIFAR) that trains on a CPU in minutes."""
    return _vit(VitConfig(img_size=32, patch_size=4, dim=128, depth=4, heads=4, mlp_ratio=2.0), overrides)


@register_model
def vitc_nano_patch8_32(**overrides: Any) -> VisionTransformer:
    """The nano ViT with a convolutional stem (ViT_C, Xiao et al. 2021) down to 8x8 patches: 16 tokens for a
    32x32 image. Learns shapes from scratch in a few CPU minutes where the patchify stem needs many epochs."""
    preset = VitConfig(img_size=32, patch_size=8, stem="conv", dim=128, depth=4, heads=4, mlp_ratio=2.0)
    return _vit(preset, overrides)


@register_model
def vit_micro_patch4_32(**overrides: Any) -> VisionTransformer:
    """A 2.9M-parameter ViT for 32x32 images."""
    return _vit(VitConfig(img_size=32, patch_size=4, dim=192, depth=6, heads=3, mlp_ratio=4.0), overrides)


@register_model
def vit_tiny_patch16_224(**overrides: Any) -> VisionTransformer:
    return _vit(VitConfig(dim=192, depth=12, heads=3), overrides)


@register_model
def vit_small_patch16_224(**overrides: Any) -> VisionTransformer:
    return _vit(VitConfig(dim=384, depth=12, heads=6), overrides)


@register_model
def vit_base_patch16_224(**overrides: Any) -> VisionTransformer:
    return _vit(VitConfig(dim=768, depth=12, heads=12), overrides)


@register_model
def vit_base_patch32_224(**overrides: Any) -> VisionTransformer:
    return _vit(VitConfig(patch_size=32, dim=768, depth=12, heads=12), overrides)


@register_model
def vit_large_patch14_224(**overrides: Any) -> VisionTransformer:
    return _vit(VitConfig(patch_size=14, dim=1024, depth=24, heads=16), overrides)
