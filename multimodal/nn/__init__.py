"""Shared transformer backbone: attention, MLPs, mixture of experts, norms, position and patch embeddings, blocks."""

from .aa_conv import AAConv2d, aa_conv_channels
from .attention import Attention, attention, composite_is_faster
from .block import Block, LayerScale, build_mlp
from .demix import DEMixMlp
from .drop_path import DropPath, drop_path
from .hooks import ActivationCache, HookPoint, hook_points, hooks, run_with_cache, run_with_hooks
from .mlp import Mlp, QuickGELU, SwiGLU, get_act_layer
from .moe import MoEMlp, make_expert, switch_load_balancing_loss
from .norm import LayerNorm, RMSNorm, build_norm
from .patch_embed import ConvStem, PatchEmbed
from .positional import LearnedPositionalEmbedding, sincos_2d_embedding, sinusoidal_embedding
from .spatial_transformer import LocalisationNet, SpatialTransformer
from .task_moe import TaskMoEMlp, merge_experts
from .transformer import Transformer

__all__ = [
    "AAConv2d",
    "ActivationCache",
    "Attention",
    "Block",
    "ConvStem",
    "DEMixMlp",
    "DropPath",
    "HookPoint",
    "LayerNorm",
    "LayerScale",
    "LearnedPositionalEmbedding",
    "LocalisationNet",
    "Mlp",
    "MoEMlp",
    "PatchEmbed",
    "QuickGELU",
    "RMSNorm",
    "SpatialTransformer",
    "SwiGLU",
    "TaskMoEMlp",
    "Transformer",
    "aa_conv_channels",
    "attention",
    "build_mlp",
    "build_norm",
    "composite_is_faster",
    "drop_path",
    "get_act_layer",
    "hook_points",
    "hooks",
    "make_expert",
    "merge_experts",
    "run_with_cache",
    "run_with_hooks",
    "sincos_2d_embedding",
    "sinusoidal_embedding",
    "switch_load_balancing_loss",
]
