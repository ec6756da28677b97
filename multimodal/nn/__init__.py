"""Shared transformer backbone: attention, MLPs, mixture of experts, norms, position and patch embeddings, blocks."""

from .attention import Attention
from .block import Block, LayerScale, build_mlp
from .drop_path import DropPath, drop_path
from .mlp import Mlp, SwiGLU
from .moe import MoEMlp, switch_load_balancing_loss
from .norm import RMSNorm, build_norm
from .patch_embed import ConvStem, PatchEmbed
from .positional import LearnedPositionalEmbedding, sincos_2d_embedding, sinusoidal_embedding
from .transformer import Transformer

__all__ = [
    "Attention",
    "Block",
    "ConvStem",
    "DropPath",
    "LayerScale",
    "LearnedPositionalEmbedding",
    "Mlp",
    "MoEMlp",
    "PatchEmbed",
    "RMSNorm",
    "SwiGLU",
    "Transformer",
    "build_mlp",
    "build_norm",
    "drop_path",
    "sincos_2d_embedding",
    "sinusoidal_embedding",
    "switch_load_balancing_loss",
]
