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
import re
from collections.abc import Mapping
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
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")
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

    @classmethod
    def from_timm(
        cls,
        model_or_state_dict: nn.Module | Mapping[str, Tensor],
        *,
        heads: int | None = None,
        act: Literal["gelu", "quick_gelu"] | None = None,
    ) -> VisionTransformer:
        """A ViT holding the weights of a timm ``VisionTransformer`` (the model, or its state dict).

        Covers timm's standard layout (``vit_tiny_patch16_224`` and friends): class token or average pooling with
        ``fc_norm``, learned position embedding, LayerNorm, GELU or QuickGELU MLPs, optional ``norm_pre`` and layer
        scale. Given a model, the architecture is read from its modules; given a state dict, from the tensor shapes,
        with ``heads`` defaulting to width // 64 (timm's ViTs), norm eps 1e-6 and ``act`` to "gelu" (a state dict
        does not record them). Anything else (register tokens, MAP pooling, dynamic image size, qk-norm, ...) is
        refused with the reason.
        """
        if isinstance(model_or_state_dict, nn.Module):
            cfg = _timm_model_config(model_or_state_dict, heads)
            if act is not None and act != cfg.act:
                raise ValueError(f"act={act!r} contradicts the model's activation {cfg.act!r}")
            state = model_or_state_dict.state_dict()
        else:
            state = dict(model_or_state_dict)
            cfg = _timm_state_config(state, heads).replace(act=act or "gelu")
        ours = cls(cfg)
        renamed = {_timm_to_ours(k, cfg): v for k, v in state.items()}
        expected = ours.state_dict()
        unexpected, missing = sorted(set(renamed) - set(expected)), sorted(set(expected) - set(renamed))
        if unexpected or missing:
            raise ValueError(
                f"timm weights do not fit the inferred ViT: unexpected {unexpected[:5]}, missing {missing[:5]}"
            )
        ours.load_state_dict({k: v.detach().float() if v.is_floating_point() else v for k, v in renamed.items()})
        return ours

    def to_timm_state_dict(self) -> dict[str, Tensor]:
        """This ViT's weights under timm's ``VisionTransformer`` names (the inverse of :meth:`from_timm`)."""
        cfg = self.cfg
        self._check_timm_counterpart()
        out = {}
        for name, tensor in self.state_dict().items():
            name = name.replace("transformer.blocks.", "blocks.", 1)
            if cfg.pool == "mean":
                name = re.sub(r"^norm\.", "fc_norm.", name)
            out[name] = tensor.clone()
        return out

    def to_timm_model_args(self) -> dict[str, Any]:
        """Keyword arguments of timm's ``VisionTransformer`` (and of any ``vit_*`` model name, whose defaults they
        override) that build this architecture, into which :meth:`to_timm_state_dict` loads strictly.

        Besides what :meth:`to_timm_state_dict` refuses, timm cannot express a norm eps other than its 1e-6, a patch
        bias that is not ``not pre_norm`` (timm ties the two), or a bias-free head; those are ValueErrors.
        """
        self._check_timm_counterpart()
        cfg = self.cfg
        unsupported = {
            f"norm_eps={cfg.norm_eps} (timm's ViT norms use 1e-6)": cfg.norm_eps != 1e-6,
            f"patch_bias={cfg.patch_bias} with pre_norm={cfg.pre_norm} (timm's patch bias is `not pre_norm`)": (
                cfg.patch_bias == cfg.pre_norm
            ),
            "head_bias=False (timm's head has a bias)": not cfg.head_bias and cfg.num_classes > 0,
        }
        if any(unsupported.values()):
            bad = ", ".join(k for k, v in unsupported.items() if v)
            raise ValueError(f"timm's VisionTransformer has no equivalent of {bad}")
        args: dict[str, Any] = {
            "img_size": cfg.img_size,
            "patch_size": cfg.patch_size,
            "in_chans": cfg.in_chans,
            "num_classes": cfg.num_classes,
            "global_pool": "avg" if cfg.pool == "mean" else "token",
            "embed_dim": cfg.dim,
            "depth": cfg.depth,
            "num_heads": cfg.heads,
            "mlp_ratio": cfg.mlp_ratio,
            "qkv_bias": cfg.qkv_bias,
            "class_token": cfg.class_token,
            "pre_norm": cfg.pre_norm,
            "init_values": cfg.layer_scale_init,
        }
        if cfg.act == "quick_gelu":
            args["act_layer"] = "quick_gelu"
        return args

    def _check_timm_counterpart(self) -> None:
        """A ValueError naming what timm's ``VisionTransformer`` has no equivalent of (stems, pooling, norms, MLPs)."""
        cfg = self.cfg
        unsupported = {
            "stem": cfg.stem != "patch",
            "pool": cfg.pool == "attn",
            "pos_embed": cfg.pos_embed != "learned",
            "norm": cfg.norm != "layer",
            "mlp": cfg.mlp != "gelu",
        }
        if any(unsupported.values()):
            bad = ", ".join(f"{k}={getattr(cfg, k)!r}" for k, v in unsupported.items() if v)
            raise ValueError(f"timm's VisionTransformer has no equivalent of {bad}")


def _timm_to_ours(name: str, cfg: VitConfig) -> str:
    name = re.sub(r"^blocks\.", "transformer.blocks.", name)
    return re.sub(r"^fc_norm\.", "norm.", name) if cfg.pool == "mean" else name


def _timm_model_config(model: nn.Module, heads: int | None) -> VitConfig:
    """The :class:`VitConfig` of a timm ``VisionTransformer``, refusing what this ViT does not implement."""
    block = model.blocks[0]
    checks = {
        "register tokens": getattr(model, "num_reg_tokens", 0) == 0,
        "no_embed_class": not getattr(model, "no_embed_class", False),
        "dynamic_img_size": not getattr(model, "dynamic_img_size", False),
        "qk_norm": isinstance(getattr(block.attn, "q_norm", nn.Identity()), nn.Identity),
        "patch_embed norm": isinstance(getattr(model.patch_embed, "norm", nn.Identity()), nn.Identity),
        f"global_pool={model.global_pool!r}": model.global_pool in ("token", "avg"),
        "average pooling without fc_norm": model.global_pool != "avg" or not isinstance(model.fc_norm, nn.Identity),
        "a norm other than LayerNorm": isinstance(
            model.fc_norm if model.global_pool == "avg" else model.norm, nn.LayerNorm
        ),
        "an MLP other than fc1 -> act -> fc2": hasattr(block.mlp, "fc1") and not hasattr(block.mlp, "fc1_g"),
        "square images and patches": model.patch_embed.img_size[0] == model.patch_embed.img_size[1]
        and model.patch_embed.patch_size[0] == model.patch_embed.patch_size[1],
    }
    refused = [what for what, ok in checks.items() if not ok]
    if refused:
        raise ValueError(f"cannot convert this timm ViT: {', '.join(refused)} not supported")
    act = type(block.mlp.act).__name__
    if act not in ("GELU", "QuickGELU") or getattr(block.mlp.act, "approximate", "none") != "none":
        raise ValueError(f"cannot convert this timm ViT: activation {act} not supported (GELU or QuickGELU)")
    norm = model.fc_norm if model.global_pool == "avg" else model.norm
    num_attn_heads = block.attn.num_heads
    if heads is not None and heads != num_attn_heads:
        raise ValueError(f"heads={heads} contradicts the model's {num_attn_heads} attention heads")
    return VitConfig(
        img_size=model.patch_embed.img_size[0],
        patch_size=model.patch_embed.patch_size[0],
        in_chans=model.patch_embed.proj.in_channels,
        num_classes=model.num_classes,
        patch_bias=model.patch_embed.proj.bias is not None,
        dim=model.embed_dim,
        depth=len(model.blocks),
        heads=num_attn_heads,
        mlp_ratio=block.mlp.fc1.out_features / model.embed_dim,
        norm_eps=norm.eps,
        act="gelu" if act == "GELU" else "quick_gelu",
        qkv_bias=block.attn.qkv.bias is not None,
        class_token=model.cls_token is not None,
        pool="token" if model.global_pool == "token" else "mean",
        pre_norm=not isinstance(model.norm_pre, nn.Identity),
        head_bias=model.num_classes == 0 or model.head.bias is not None,
        layer_scale_init=1.0 if not isinstance(block.ls1, nn.Identity) else None,
    )


def _timm_state_config(state: Mapping[str, Tensor], heads: int | None) -> VitConfig:
    """The :class:`VitConfig` of a timm ViT state dict, from its tensor shapes."""
    if "patch_embed.proj.weight" not in state or "pos_embed" not in state:
        raise ValueError("not a timm VisionTransformer state dict: no patch_embed.proj.weight / pos_embed")
    dim, in_chans, patch, patch_w = state["patch_embed.proj.weight"].shape
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    prefix = 1 if "cls_token" in state else 0
    grid = math.isqrt(state["pos_embed"].shape[1] - prefix)
    if patch != patch_w or grid * grid != state["pos_embed"].shape[1] - prefix:
        raise ValueError("only square patches and square position grids of timm ViTs are supported")
    return VitConfig(
        img_size=grid * patch,
        patch_size=patch,
        in_chans=in_chans,
        num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0,
        patch_bias="patch_embed.proj.bias" in state,
        dim=dim,
        depth=depth,
        heads=heads or max(1, dim // 64),
        mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / dim,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        class_token=bool(prefix),
        pool="mean" if "fc_norm.weight" in state else "token",
        pre_norm="norm_pre.weight" in state,
        head_bias="head.bias" in state or "head.weight" not in state,
        layer_scale_init=1.0 if "blocks.0.ls1.gamma" in state else None,
    )


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
