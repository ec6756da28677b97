"""CLIP (Radford et al. 2021): an image tower and a causal text tower trained to agree, on the shared backbone.

The image tower is this suite's :class:`VisionTransformer` (or any timm model by name); the text tower is the shared
:class:`~multimodal.nn.Transformer` run causally and pooled at the end-of-text token. ``CLIP.from_open_clip`` and
``CLIP.to_open_clip_state_dict`` convert open_clip ViT CLIPs both ways without loss, and the outputs match open_clip's
(the math is the same: pre-norm blocks, fused [q; k; v] projections, ``ln_post`` before taking the class token).

Names, open_clip -> ours (blocks ``i`` of both towers alike)::

    visual.conv1                                 visual.patch_embed.proj
    visual.class_embedding (C,)                  visual.cls_token (1, 1, C)
    visual.positional_embedding (N, C)           visual.pos_embed (1, N, C)
    visual.ln_pre / visual.ln_post               visual.norm_pre / visual.norm
    visual.proj (C, E)                           visual.head.weight (E, C)
    [visual.]transformer.resblocks.i.            [visual|text].transformer.blocks.i.
        ln_1 / ln_2 / ls_1.gamma / ls_2.gamma        norm1 / norm2 / ls1.gamma / ls2.gamma
        attn.in_proj_weight / attn.in_proj_bias      attn.qkv.weight / attn.qkv.bias
        attn.out_proj / mlp.c_fc / mlp.c_proj        attn.proj / mlp.fc1 / mlp.fc2
    token_embedding                              text.token_embedding
    positional_embedding (L, C)                  text.pos_embed (1, L, C)
    ln_final                                     text.norm
    text_projection (C, E)                       text.proj.weight (E, C)
    logit_scale, logit_bias                      logit_scale, logit_bias
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config, ConfigError, suggest
from ..nn import Transformer, build_norm, get_act_layer
from .registry import create_model, register_model
from .vit import VisionTransformer, VitConfig

__all__ = ["CLIP", "ClipConfig", "ClipTextConfig", "ClipVisionConfig", "TextTransformer"]


@dataclasses.dataclass(frozen=True)
class ClipVisionConfig(Config):
    """CLIP's image tower: a ViT laid out as open_clip's, any timm model (``timm_model``) or any model of this
    project's registry (``model``, e.g. "aa_resnet18"), built with ``num_classes=embed_dim``.

    Fields are named as in the text tower (width, layers, heads); ``img_size`` as in :class:`VitConfig` (with
    ``timm_model`` or ``model`` it is only the image side the trainer checks the data against).
    """

    img_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12  # open_clip: width // 64
    mlp_ratio: float = 4.0
    act: Literal["gelu", "quick_gelu"] = "gelu"  # quick_gelu for OpenAI's weights
    norm_eps: float = 1e-5
    pre_norm: bool = True  # open_clip's ln_pre
    pool: Literal["token", "mean", "attn"] = "token"  # mean = open_clip's avg pooling with final_ln_after_pool
    pool_queries: int = 1  # learned queries of pool="attn"
    stem: Literal["patch", "conv"] = "patch"  # conv: Xiao et al. 2021's convolutional stem (not in open_clip)
    stem_width: int = 32
    layer_scale_init: float | None = None  # open_clip's ls_init_value
    drop_path_rate: float = 0.0
    timm_model: str | None = None  # a timm model name: the tower is timm.create_model(name, num_classes=embed_dim)
    timm_kwargs: dict[str, Any] | None = None  # extra timm.create_model arguments, e.g. {"img_size": 64}
    model: str | None = None  # a multimodal.create_model name: the tower is create_model(name, num_classes=embed_dim)
    model_kwargs: dict[str, Any] | None = None  # its overrides, e.g. {"stem": "small", "img_size": 32}

    def __post_init__(self) -> None:
        if self.timm_model is None and self.model is None and self.width % self.heads:
            raise ValueError(f"vision.width ({self.width}) must be divisible by vision.heads ({self.heads})")
        if self.timm_kwargs and self.timm_model is None:
            raise ValueError("vision.timm_kwargs only apply with vision.timm_model set")
        if self.model_kwargs and self.model is None:
            raise ValueError("vision.model_kwargs only apply with vision.model set")
        if self.model is not None and self.timm_model is not None:
            raise ValueError("set one of vision.model (this project's registry) and vision.timm_model, not both")

    def vit_config(self, embed_dim: int) -> VitConfig:
        """The :class:`VitConfig` of this tower: the head is CLIP's bias-free projection to ``embed_dim``."""
        return VitConfig(
            img_size=self.img_size,
            patch_size=self.patch_size,
            num_classes=embed_dim,
            stem=self.stem,
            stem_width=self.stem_width,
            patch_bias=self.stem == "conv",
            dim=self.width,
            depth=self.layers,
            heads=self.heads,
            mlp_ratio=self.mlp_ratio,
            norm_eps=self.norm_eps,
            act=self.act,
            class_token=True,
            pool=self.pool,
            pool_queries=self.pool_queries,
            pre_norm=self.pre_norm,
            head_bias=False,
            layer_scale_init=self.layer_scale_init,
            drop_path_rate=self.drop_path_rate,
        )


@dataclasses.dataclass(frozen=True)
class ClipTextConfig(Config):
    """CLIP's text tower: a causal transformer over BPE tokens, pooled at the end-of-text token."""

    context_length: int = 77
    vocab_size: int = 49408  # the CLIP BPE vocabulary (multimodal.tokenizers.ClipTokenizer)
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_ratio: float = 4.0
    act: Literal["gelu", "quick_gelu"] = "gelu"
    norm_eps: float = 1e-5
    layer_scale_init: float | None = None
    proj_bias: bool = False
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"text.width ({self.width}) must be divisible by text.heads ({self.heads})")
        if self.context_length < 2:
            raise ValueError(
                f"text.context_length must hold at least the start and end tokens, got {self.context_length}"
            )


@dataclasses.dataclass(frozen=True)
class ClipConfig(Config):
    """A CLIP model: both towers, the shared embedding size and the learned temperature (and SigLIP bias)."""

    embed_dim: int = 512
    vision: ClipVisionConfig = dataclasses.field(default_factory=ClipVisionConfig)
    text: ClipTextConfig = dataclasses.field(default_factory=ClipTextConfig)
    init_logit_scale: float = math.log(1 / 0.07)  # logit_scale is stored as a log; exp() is the inverse temperature
    max_logit_scale: float = math.log(100)  # clamp_logit_scale_() bound
    init_logit_bias: float | None = None  # SigLIP: -10; None = no logit_bias parameter
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {self.embed_dim}")
        if self.max_logit_scale < 0:
            raise ValueError(f"max_logit_scale is a log and must be >= 0, got {self.max_logit_scale}")

    @classmethod
    def preset(cls, name: str) -> ClipConfig:
        """A named architecture: "vit-b32", "vit-b16", "vit-l14" (open_clip's shapes), "tiny" or "nano" (CPU)."""
        if name not in _PRESETS:
            raise ConfigError(f"unknown CLIP preset {name!r}{suggest(name, _PRESETS)}")
        return _PRESETS[name]


class TextTransformer(nn.Module):
    """CLIP's text encoder: token and learned position embeddings, a causal :class:`Transformer`, a final norm,
    pooled at the end-of-text token and projected to ``embed_dim``.

    The end-of-text token is found as the largest id of each row (open_clip's "argmax" pooling): with the CLIP BPE it
    is the last id of the vocabulary. Causal attention makes tokens after it (padding) irrelevant.
    """

    def __init__(self, cfg: ClipTextConfig, embed_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.context_length, cfg.width))
        self.transformer = Transformer(
            cfg.width,
            cfg.layers,
            heads=cfg.heads,
            mlp_ratio=cfg.mlp_ratio,
            norm_eps=cfg.norm_eps,
            act_layer=get_act_layer(cfg.act),
            layer_scale_init=cfg.layer_scale_init,
            drop_path_rate=cfg.drop_path_rate,
        )
        self.norm = build_norm("layer", cfg.width, eps=cfg.norm_eps)
        self.proj = nn.Linear(cfg.width, embed_dim, bias=cfg.proj_bias)
        self._init_weights()

    def _init_weights(self) -> None:
        """open_clip's initialisation of the text tower."""
        width, layers = self.cfg.width, self.cfg.layers
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)
        for blk in self.transformer.blocks:
            nn.init.normal_(blk.attn.qkv.weight, std=width**-0.5)
            nn.init.normal_(blk.attn.proj.weight, std=proj_std)
            nn.init.normal_(blk.mlp.fc1.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(blk.mlp.fc2.weight, std=proj_std)
            for linear in (blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2):
                nn.init.zeros_(linear.bias)
        nn.init.normal_(self.proj.weight, std=width**-0.5)
        if self.proj.bias is not None:
            nn.init.zeros_(self.proj.bias)

    def forward_features(self, tokens: Tensor) -> Tensor:
        """Token ids (B, L) with L <= context_length -> normed token features (B, L, width)."""
        if tokens.ndim != 2 or tokens.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"expected integer token ids of shape (B, L), got {tuple(tokens.shape)} {tokens.dtype}")
        if tokens.shape[1] > self.cfg.context_length:
            raise ValueError(
                f"{tokens.shape[1]} tokens exceed the context length {self.cfg.context_length}; tokenize with "
                f"ClipTokenizer(context_length={self.cfg.context_length})"
            )
        x = self.token_embedding(tokens)  # (B, L, width)
        x = x + self.pos_embed[:, : tokens.shape[1]].to(x.dtype)
        x = self.transformer(x, causal=True)
        return self.norm(x)

    def forward(self, tokens: Tensor) -> Tensor:
        """Token ids (B, L) -> text features (B, embed_dim), taken at each row's end-of-text token."""
        x = self.forward_features(tokens)  # (B, L, width)
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]  # (B, width)
        return self.proj(x)


def _timm_tower(cfg: ClipVisionConfig, embed_dim: int) -> nn.Module:
    import timm

    if not timm.is_model(cfg.timm_model):
        raise ValueError(
            f"vision.timm_model {cfg.timm_model!r} is not a timm model{suggest(cfg.timm_model, timm.list_models())}"
        )
    model = timm.create_model(cfg.timm_model, pretrained=False, num_classes=embed_dim, **(cfg.timm_kwargs or {}))
    return _init_projection(model, model.get_classifier())


def _registry_tower(cfg: ClipVisionConfig, embed_dim: int) -> nn.Module:
    model = create_model(cfg.model, **{**(cfg.model_kwargs or {}), "num_classes": embed_dim})
    head = model.get_classifier() if hasattr(model, "get_classifier") else getattr(model, "head", None)
    return _init_projection(model, head)


def _init_projection(model: nn.Module, head: nn.Module | None) -> nn.Module:
    """Re-initialise a classifier head that now projects to CLIP's embedding: a zero-initialised head (as ViTs have)
    would give all-zero, unnormalisable features."""
    if isinstance(head, nn.Linear):
        nn.init.normal_(head.weight, std=head.in_features**-0.5)
        if head.bias is not None:
            nn.init.zeros_(head.bias)
    return model


class CLIP(nn.Module):
    """CLIP dual encoder: ``visual`` (images -> embed_dim) and ``text`` (tokens -> embed_dim), and a learned
    ``logit_scale`` (the log of the inverse temperature) plus, for SigLIP, a ``logit_bias``."""

    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.vision.timm_model is not None:
            self.visual = _timm_tower(cfg.vision, cfg.embed_dim)
        elif cfg.vision.model is not None:
            self.visual = _registry_tower(cfg.vision, cfg.embed_dim)
        else:
            self.visual = VisionTransformer(cfg.vision.vit_config(cfg.embed_dim))
            nn.init.normal_(self.visual.head.weight, std=cfg.vision.width**-0.5)  # open_clip's proj init
        self.text = TextTransformer(cfg.text, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(cfg.init_logit_scale))
        if cfg.init_logit_bias is not None:
            self.logit_bias = nn.Parameter(torch.tensor(cfg.init_logit_bias))
        else:
            self.register_parameter("logit_bias", None)
        if cfg.grad_checkpointing:
            self.set_grad_checkpointing(True)

    def encode_image(self, images: Tensor, normalize: bool = False) -> Tensor:
        """Images (B, 3, H, W) -> image features (B, embed_dim), unit-length with ``normalize``."""
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: Tensor, normalize: bool = False) -> Tensor:
        """Token ids (B, L) -> text features (B, embed_dim), unit-length with ``normalize``."""
        x = self.text(tokens)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text_tokens(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Token ids (B, L) -> unit-norm text embeddings (B, E), the per-token features (B, L, width) and a padding
        mask (B, L), True after each row's end-of-text token: the text conditioning of unCLIP's prior and decoder."""
        feats = self.text.forward_features(tokens)  # (B, L, width)
        eot = tokens.argmax(dim=-1)  # (B,)
        embeds = self.text.proj(feats[torch.arange(tokens.shape[0], device=tokens.device), eot])  # (B, E)
        padding = torch.arange(tokens.shape[1], device=tokens.device)[None] > eot[:, None]  # (B, L)
        return F.normalize(embeds, dim=-1), feats, padding

    def forward(self, images: Tensor, tokens: Tensor) -> dict[str, Tensor]:
        """Images (B, 3, H, W) and token ids (B', L) -> the dict open_clip returns with ``output_dict=True``:
        normalised ``image_features`` (B, E) and ``text_features`` (B', E), ``logit_scale`` already exp'd (a scalar),
        and ``logit_bias`` when the model has one."""
        out = {
            "image_features": self.encode_image(images, normalize=True),
            "text_features": self.encode_text(tokens, normalize=True),
            "logit_scale": self.logit_scale.exp(),
        }
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out

    def get_logits(self, images: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Image-to-text logits (B, B') and their transpose, scaled (and biased) as in training."""
        out = self(images, tokens)
        logits = out["logit_scale"] * out["image_features"] @ out["text_features"].T  # (B, B')
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
        return logits, logits.T

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Clamp ``logit_scale`` in place to [0, max_logit_scale] (a temperature of at most 1 and at least 1/100);
        call after every optimizer step."""
        self.logit_scale.clamp_(0, self.cfg.max_logit_scale)

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay besides norms and biases."""
        visual = getattr(self.visual, "no_weight_decay", set)()
        params = dict(self.named_parameters())
        names = {"logit_scale", "logit_bias", "text.pos_embed"} | {f"visual.{n}" for n in visual}
        return {n for n in names if n in params}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the blocks' activations of both towers in backward to save memory."""
        self.visual.set_grad_checkpointing(enable)
        self.text.transformer.set_grad_checkpointing(enable)

    @classmethod
    def from_open_clip(
        cls,
        model_or_state_dict: nn.Module | Mapping[str, Tensor],
        *,
        config: ClipConfig | None = None,
        quick_gelu: bool | None = None,
    ) -> CLIP:
        """A CLIP holding the weights of an open_clip ViT CLIP (an ``open_clip.CLIP`` or its state dict).

        Without ``config`` the architecture is read from the tensor shapes (heads = width // 64, as open_clip) and,
        given a model, from its modules (heads, activation, norm eps, pooling). The activation leaves no trace in a
        state dict: pass ``quick_gelu=True`` for OpenAI's weights (open_clip's ``*-quickgelu`` models). Floating
        tensors are copied as float32 onto the device they are on.
        """
        model = model_or_state_dict if isinstance(model_or_state_dict, nn.Module) else None
        state = dict(model.state_dict() if model is not None else model_or_state_dict)
        if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
            state = {k[len("module.") :]: v for k, v in state.items()}
        _check_open_clip_layout(state)
        if config is None:
            config = _infer_config(state, model, quick_gelu)
        elif quick_gelu is not None:
            raise ValueError("quick_gelu only applies when the config is inferred; set vision.act and text.act")
        if config.vision.timm_model is not None or config.vision.model is not None:
            raise ValueError("from_open_clip converts ViT image towers; the config sets vision.timm_model or model")
        names = _open_clip_names(config)  # ours -> theirs
        theirs_to_ours = {v: k for k, v in names.items()}
        unexpected = sorted(set(state) - set(theirs_to_ours))
        missing = sorted(set(theirs_to_ours) - set(state))
        if unexpected or missing:
            raise ValueError(
                "the open_clip weights do not fit this CLIP architecture: "
                f"unexpected keys {_head(unexpected)}, missing keys {_head(missing)}"
            )
        ours = {}
        for theirs, tensor in state.items():
            tensor = tensor.detach().clone()
            tensor = tensor.float() if tensor.is_floating_point() else tensor
            to_ours = _RESHAPES.get(theirs, (None, None))[0]
            ours[theirs_to_ours[theirs]] = to_ours(tensor).contiguous() if to_ours else tensor
        with torch.device("meta"):
            clip = cls(config)
        try:
            clip.load_state_dict(ours, strict=True, assign=True)
        except RuntimeError as e:
            raise ValueError(f"the open_clip weights do not fit the given config: {e}") from None
        assert not any(t.is_meta for t in [*clip.parameters(), *clip.buffers()]), "a tensor was left unloaded"
        return clip

    def to_open_clip_state_dict(self) -> dict[str, Tensor]:
        """This model's weights under open_clip's names and shapes, for ``open_clip.CLIP.load_state_dict``.

        The open_clip model must match: ``quick_gelu`` for act="quick_gelu", ``no_ln_pre`` for pre_norm=False,
        ``pool_type="avg", final_ln_after_pool=True`` for pool="mean" (:meth:`to_open_clip_config` gives it all).
        Conv stems, attention pooling and timm towers have no open_clip counterpart.
        """
        self._check_open_clip_counterpart()
        names = _open_clip_names(self.cfg)
        out = {}
        for ours, tensor in self.state_dict().items():
            theirs = names[ours]
            to_theirs = _RESHAPES.get(theirs, (None, None))[1]
            out[theirs] = to_theirs(tensor).contiguous() if to_theirs else tensor
        return out

    def to_open_clip_config(self) -> dict[str, Any]:
        """open_clip's ``model_cfg`` of this architecture (what an ``open_clip_config.json`` holds): with it,
        ``open_clip.model.CLIP(**cfg)`` is the model :meth:`to_open_clip_state_dict` loads into, strictly.

        open_clip has one activation for both towers (``quick_gelu``); towers with different ones are refused.
        """
        self._check_open_clip_counterpart()
        v, t = self.cfg.vision, self.cfg.text
        if v.act != t.act:
            raise ValueError(
                f"vision.act={v.act!r} and text.act={t.act!r} differ; open_clip has one activation for both towers"
            )
        cfg = {
            "embed_dim": self.cfg.embed_dim,
            "quick_gelu": v.act == "quick_gelu",
            "vision_cfg": {
                "image_size": v.img_size,
                "patch_size": v.patch_size,
                "width": v.width,
                "layers": v.layers,
                "head_width": v.width // v.heads,  # open_clip's heads = width // head_width
                "mlp_ratio": v.mlp_ratio,
                "ls_init_value": v.layer_scale_init,
                "no_ln_pre": not v.pre_norm,
                "pool_type": "avg" if v.pool == "mean" else "tok",
                "final_ln_after_pool": v.pool == "mean",
                "attentional_pool": False,
                "pos_embed_type": "learnable",
                "norm_kwargs": {"eps": v.norm_eps},
            },
            "text_cfg": {
                "context_length": t.context_length,
                "vocab_size": t.vocab_size,
                "width": t.width,
                "heads": t.heads,
                "layers": t.layers,
                "mlp_ratio": t.mlp_ratio,
                "ls_init_value": t.layer_scale_init,
                "proj_bias": t.proj_bias,
                "pool_type": "argmax",
                "final_ln_after_pool": False,
                "no_causal_mask": False,
                "embed_cls": False,
                "norm_kwargs": {"eps": t.norm_eps},
            },
        }
        if self.cfg.init_logit_bias is not None:
            cfg["init_logit_bias"] = self.cfg.init_logit_bias  # open_clip makes a logit_bias only when given one
        return cfg

    def _check_open_clip_counterpart(self) -> None:
        """A ValueError naming what open_clip's CLIP cannot express: towers from timm or the registry (AA-ResNet,
        STN, ...), conv stems, attention pooling."""
        vision = self.cfg.vision
        if vision.timm_model is not None or vision.model is not None:  # the tower's own stem and pooling: moot
            unsupported = {
                f"vision.timm_model={vision.timm_model!r}": vision.timm_model is not None,
                f"vision.model={vision.model!r}": vision.model is not None,
            }
        else:
            unsupported = {"vision.stem='conv'": vision.stem == "conv", "vision.pool='attn'": vision.pool == "attn"}
        if any(unsupported.values()):
            names = ", ".join(k for k, v in unsupported.items() if v)
            raise ValueError(
                f"{names} has no open_clip counterpart: open_clip takes this suite's ViT tower with the patchify stem "
                "and class-token or mean pooling (train with model.args.vision.stem=patch to export)"
            )


# open_clip <-> ours: shape changes by open_clip name, (to ours, to theirs).
_RESHAPES: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "visual.class_embedding": (lambda t: t.reshape(1, 1, -1), lambda t: t.reshape(-1)),
    "visual.positional_embedding": (lambda t: t.unsqueeze(0), lambda t: t.squeeze(0)),
    "positional_embedding": (lambda t: t.unsqueeze(0), lambda t: t.squeeze(0)),
    "visual.proj": (lambda t: t.T, lambda t: t.T),
    "text_projection": (lambda t: t.T, lambda t: t.T),
    "logit_scale": (lambda t: t.reshape(()), lambda t: t),
    "logit_bias": (lambda t: t.reshape(()), lambda t: t),
}

_BLOCK_NAMES = {
    "norm1": "ln_1",
    "attn.qkv": "attn.in_proj",
    "attn.proj": "attn.out_proj",
    "ls1.gamma": "ls_1.gamma",
    "norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "ls2.gamma": "ls_2.gamma",
}


def _block_keys(ours: str, theirs: str, layers: int, layer_scale: bool) -> dict[str, str]:
    """Names of ``layers`` blocks, ours -> theirs, under the prefixes ``ours`` and ``theirs``."""
    out = {}
    for i in range(layers):
        for our_name, their_name in _BLOCK_NAMES.items():
            if our_name.startswith("ls") and not layer_scale:
                continue
            if our_name.endswith("gamma"):
                out[f"{ours}.{i}.{our_name}"] = f"{theirs}.{i}.{their_name}"
                continue
            for param in ("weight", "bias"):
                their_param = f"{their_name}_{param}" if their_name == "attn.in_proj" else f"{their_name}.{param}"
                out[f"{ours}.{i}.{our_name}.{param}"] = f"{theirs}.{i}.{their_param}"
    return out


def _open_clip_names(cfg: ClipConfig) -> dict[str, str]:
    """Every state-dict name of a ViT CLIP built from ``cfg``, ours -> open_clip's."""
    v, t = cfg.vision, cfg.text
    names = {
        "visual.patch_embed.proj.weight": "visual.conv1.weight",
        "visual.cls_token": "visual.class_embedding",
        "visual.pos_embed": "visual.positional_embedding",
        "visual.norm.weight": "visual.ln_post.weight",
        "visual.norm.bias": "visual.ln_post.bias",
        "visual.head.weight": "visual.proj",
        "text.token_embedding.weight": "token_embedding.weight",
        "text.pos_embed": "positional_embedding",
        "text.norm.weight": "ln_final.weight",
        "text.norm.bias": "ln_final.bias",
        "logit_scale": "logit_scale",
    }
    if v.pre_norm:
        names |= {"visual.norm_pre.weight": "visual.ln_pre.weight", "visual.norm_pre.bias": "visual.ln_pre.bias"}
    if t.proj_bias:
        names |= {"text.proj.weight": "text_projection.weight", "text.proj.bias": "text_projection.bias"}
    else:
        names["text.proj.weight"] = "text_projection"
    if cfg.init_logit_bias is not None:
        names["logit_bias"] = "logit_bias"
    names |= _block_keys(
        "visual.transformer.blocks", "visual.transformer.resblocks", v.layers, v.layer_scale_init is not None
    )
    names |= _block_keys("text.transformer.blocks", "transformer.resblocks", t.layers, t.layer_scale_init is not None)
    return names


_UNSUPPORTED = {  # a key prefix of open_clip models other than ViT CLIPs -> what they are
    "visual.layer1.": "a ResNet (ModifiedResNet) image tower",
    "visual.attnpool.": "a ResNet (ModifiedResNet) image tower",
    "visual.trunk.": "a timm image tower",
    "visual.attn_pool.": "CoCa's attentional pooler",
    "text_decoder.": "CoCa's text decoder",
    "text.": "a separate text tower (open_clip.CustomTextCLIP, e.g. a Hugging Face text encoder)",
}
_REQUIRED_KEYS = (
    "visual.conv1.weight",
    "visual.positional_embedding",
    "visual.proj",
    "token_embedding.weight",
    "positional_embedding",
)


def _check_open_clip_layout(state: Mapping[str, Tensor]) -> None:
    for prefix, what in _UNSUPPORTED.items():
        if any(k.startswith(prefix) for k in state):
            raise ValueError(
                f"these open_clip weights have {what} ({prefix}* keys); only ViT CLIPs with open_clip's own text "
                "transformer are supported"
            )
    for key in _REQUIRED_KEYS:
        if key not in state:
            raise ValueError(
                f"not an open_clip ViT CLIP state dict: it has no {key!r}; got keys {_head(sorted(state))}"
            )


def _head(keys: list[str], n: int = 6) -> str:
    return "[]" if not keys else ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _num_blocks(state: Mapping[str, Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    if not found:
        raise ValueError(f"not an open_clip ViT CLIP state dict: no {prefix}N blocks")
    return max(found) + 1


def _infer_config(state: Mapping[str, Tensor], model: nn.Module | None, quick_gelu: bool | None) -> ClipConfig:
    """A ClipConfig read from open_clip tensor shapes, and from the model's modules when given one."""
    conv = state["visual.conv1.weight"]  # (width, 3, p, p)
    width, patch = conv.shape[0], conv.shape[-1]
    grid = math.isqrt(state["visual.positional_embedding"].shape[0] - 1)
    if grid * grid + 1 != state["visual.positional_embedding"].shape[0] or conv.shape[-2] != patch:
        raise ValueError("only square images and patches are supported: the position table is not a square grid")
    text_width = state["token_embedding.weight"].shape[1]
    vision = dict(
        img_size=grid * patch,
        patch_size=patch,
        width=width,
        layers=_num_blocks(state, "visual.transformer.resblocks."),
        heads=max(1, width // 64),
        mlp_ratio=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
        pre_norm="visual.ln_pre.weight" in state,
        layer_scale_init=1e-5 if "visual.transformer.resblocks.0.ls_1.gamma" in state else None,  # loaded over
    )
    text = dict(
        context_length=state["positional_embedding"].shape[0],
        vocab_size=state["token_embedding.weight"].shape[0],
        width=text_width,
        layers=_num_blocks(state, "transformer.resblocks."),
        heads=max(1, text_width // 64),
        mlp_ratio=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width,
        proj_bias="text_projection.bias" in state,
        layer_scale_init=1e-5 if "transformer.resblocks.0.ls_1.gamma" in state else None,
    )
    proj = state["visual.proj"]
    if model is not None:
        _read_open_clip_modules(model, vision, text, quick_gelu)
    elif quick_gelu is not None:
        vision["act"] = text["act"] = "quick_gelu" if quick_gelu else "gelu"
    logit_bias = state.get("logit_bias")
    return ClipConfig(
        embed_dim=proj.shape[1],
        vision=ClipVisionConfig(**vision),
        text=ClipTextConfig(**text),
        init_logit_bias=None if logit_bias is None else float(logit_bias.reshape(())),
    )


def _read_open_clip_modules(model: nn.Module, vision: dict, text: dict, quick_gelu: bool | None) -> None:
    """Fill in what weights do not show from an open_clip CLIP's modules: heads, activation, eps, pooling."""
    visual = model.visual
    for cfg, blocks, norm, tower in (
        (vision, visual.transformer.resblocks, visual.ln_post, "image"),
        (text, model.transformer.resblocks, model.ln_final, "text"),
    ):
        cfg["heads"] = blocks[0].attn.num_heads
        cfg["norm_eps"] = norm.eps
        is_quick = type(blocks[0].mlp.gelu).__name__ == "QuickGELU"
        if quick_gelu is not None and quick_gelu != is_quick:
            raise ValueError(
                f"quick_gelu={quick_gelu} but the open_clip {tower} tower uses {type(blocks[0].mlp.gelu).__name__}"
            )
        cfg["act"] = "quick_gelu" if is_quick else "gelu"
    pool, ln_after = getattr(visual, "pool_type", "tok"), getattr(visual, "final_ln_after_pool", False)
    if pool == "avg" and ln_after:
        vision["pool"] = "mean"
    elif pool != "tok":
        raise ValueError(
            f"open_clip image pooling pool_type={pool!r}, final_ln_after_pool={ln_after} is not supported; "
            "use 'tok', or 'avg' with final_ln_after_pool=True"
        )
    if getattr(model, "text_pool_type", "argmax") != "argmax" or getattr(model, "attn_mask", None) is None:
        raise ValueError("only causal open_clip text towers pooled at the end-of-text token (argmax) are supported")


_PRESETS: dict[str, ClipConfig] = {
    "vit-b32": ClipConfig(embed_dim=512),
    "vit-b16": ClipConfig(embed_dim=512, vision=ClipVisionConfig(patch_size=16)),
    "vit-l14": ClipConfig(
        embed_dim=768,
        vision=ClipVisionConfig(patch_size=14, width=1024, layers=24, heads=16),
        text=ClipTextConfig(width=768, heads=12),
    ),
    "tiny": ClipConfig(
        embed_dim=256,
        vision=ClipVisionConfig(img_size=64, patch_size=8, width=256, layers=6, heads=4),
        text=ClipTextConfig(context_length=32, width=256, layers=6, heads=4),
    ),
    "nano": ClipConfig(
        embed_dim=128,
        vision=ClipVisionConfig(img_size=32, patch_size=8, stem="conv", width=128, layers=4, heads=4, mlp_ratio=2.0),
        text=ClipTextConfig(context_length=16, width=128, layers=4, heads=4, mlp_ratio=2.0),
    ),
}


@register_model
def clip_vit_b32(**overrides: Any) -> CLIP:
    """open_clip's ViT-B-32: 224 px, 32 px patches, 12 x 768 image and 12 x 512 text layers, 512-d embeddings."""
    return CLIP(ClipConfig.preset("vit-b32").replace(**overrides))


@register_model
def clip_vit_b16(**overrides: Any) -> CLIP:
    """open_clip's ViT-B-16."""
    return CLIP(ClipConfig.preset("vit-b16").replace(**overrides))


@register_model
def clip_vit_l14(**overrides: Any) -> CLIP:
    """open_clip's ViT-L-14: 24 x 1024 image and 12 x 768 text layers, 768-d embeddings."""
    return CLIP(ClipConfig.preset("vit-l14").replace(**overrides))


@register_model
def clip_tiny(**overrides: Any) -> CLIP:
    """A CPU-trainable CLIP: 64 px images in 8 px patches, 6 x 256 layers per tower, 32 tokens, 256-d embeddings."""
    return CLIP(ClipConfig.preset("tiny").replace(**overrides))


@register_model
def clip_nano(**overrides: Any) -> CLIP:
    """The smallest CLIP, for tests and CPU demos: 32 px images through a conv stem to 16 tokens, 4 x 128 layers
    per tower, 16 text tokens, 128-d embeddings."""
    return CLIP(ClipConfig.preset("nano").replace(**overrides))
