"""Model families; importing this package registers every model with ``create_model``."""

from .aa_resnet import AAResNet, ResNetConfig
from .clip import CLIP, ClipConfig, ClipTextConfig, ClipVisionConfig, TextTransformer
from .registry import create_model, list_models, register_model
from .vit import AttentionPool, VisionTransformer, VitConfig

__all__ = [
    "CLIP",
    "AAResNet",
    "AttentionPool",
    "ClipConfig",
    "ClipTextConfig",
    "ClipVisionConfig",
    "ResNetConfig",
    "TextTransformer",
    "VisionTransformer",
    "VitConfig",
    "create_model",
    "list_models",
    "register_model",
]
