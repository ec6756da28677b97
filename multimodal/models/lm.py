"""A decoder-only language model from the shared backbone, shaped as the toy models of "A Mathematical Framework
for Transformer Circuits" (Elhage et al. 2021) and TransformerLens's ``attn-only`` models.

    logits = (W_E[tokens] + W_pos) -> blocks (causal; attention only with mlp="none") -> [final norm] -> W_U

``depth=0`` leaves only the direct path W_E W_U, which can learn bigram statistics and nothing more. The token
table ``W_E`` (V, C) and the unembedding ``W_U`` (C, V) are separate matrices (untied), as in the paper. Hook points:
``hook_embed``, ``hook_pos_embed`` and every block's (:mod:`multimodal.nn.hooks`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config
from ..nn import HookPoint, Transformer, build_norm
from .registry import register_model

__all__ = ["TransformerLM", "TransformerLMConfig"]

NORM_EPS = 1e-5  # every norm's, as in GPT-2 and TransformerLens's default


@dataclasses.dataclass(frozen=True)
class TransformerLMConfig(Config):
    """Architecture of a :class:`TransformerLM`."""

    vocab_size: int = 64
    context_length: int = 64
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp: Literal["gelu", "swiglu", "none"] = "none"  # "none": attention only
    mlp_ratio: float = 4.0
    norm: Literal["layer", "rms", "none"] = "none"  # the blocks' pre-norms and the final norm; "none": neither

    def __post_init__(self) -> None:
        if self.depth < 0:
            raise ValueError(f"depth must be >= 0 (0: the direct path only), got {self.depth}")
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} must be divisible by heads={self.heads}")
        if self.vocab_size < 2 or self.context_length < 1:
            raise ValueError(f"vocab_size must be >= 2 and context_length >= 1, got {self.vocab_size}, "
                             f"{self.context_length}")  # fmt: skip


class TransformerLM(nn.Module):
    """Next-token logits over (B, N) token ids."""

    def __init__(self, cfg: TransformerLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.W_E = nn.Parameter(torch.randn(cfg.vocab_size, cfg.dim) * 0.02)  # (V, C)
        self.W_pos = nn.Parameter(torch.randn(cfg.context_length, cfg.dim) * 0.02)  # (ctx, C)
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()
        self.transformer = (
            Transformer(cfg.dim, cfg.depth, heads=cfg.heads, mlp=cfg.mlp, mlp_ratio=cfg.mlp_ratio, norm=cfg.norm,
                        norm_eps=NORM_EPS)
            if cfg.depth else None
        )  # fmt: skip
        self.norm = build_norm(cfg.norm, cfg.dim, eps=NORM_EPS)
        self.W_U = nn.Parameter(torch.randn(cfg.dim, cfg.vocab_size) * cfg.dim**-0.5)  # (C, V)

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, N) ids -> (B, N, V) logits of the next token at each position."""
        if tokens.ndim != 2:
            raise ValueError(f"expected token ids of shape (B, N), got {tuple(tokens.shape)}")
        N = tokens.shape[1]
        if self.cfg.context_length < N:
            raise ValueError(f"{N} tokens exceed context_length={self.cfg.context_length}")
        x = self.hook_embed(F.embedding(tokens, self.W_E)) + self.hook_pos_embed(
            self.W_pos[:N].expand(len(tokens), -1, -1)
        )
        if self.transformer is not None:
            x = self.transformer(x, causal=True)
        return self.norm(x) @ self.W_U


def _lm(preset: TransformerLMConfig, overrides: dict[str, Any]) -> TransformerLM:
    return TransformerLM(preset.replace(**overrides))


@register_model
def attn_only_lm(**overrides: Any) -> TransformerLM:
    """An attention-only language model for circuits work: 2 layers of width 64, 4 heads, no norms (``depth=0``
    and ``depth=1`` for the paper's smaller models)."""
    return _lm(TransformerLMConfig(), overrides)
