"""Model families; importing this package registers every model with ``create_model``."""

from .aa_resnet import AAResNet, ResNetConfig
from .clip import CLIP, ClipConfig, ClipTextConfig, ClipVisionConfig, TextTransformer
from .decoder import UnclipDecoder, UnclipUpsampler
from .gato import Gato, GatoConfig
from .lm import TransformerLM, TransformerLMConfig
from .prior import DiffusionPrior, PriorTransformer
from .registry import create_model, list_models, register_model
from .stn import SpatialTransformerNet
from .vit import AttentionPool, VisionTransformer, VitConfig

__all__ = [
    "CLIP",
    "AAResNet",
    "AttentionPool",
    "ClipConfig",
    "ClipTextConfig",
    "ClipVisionConfig",
    "DiffusionPrior",
    "Gato",
    "GatoConfig",
    "PriorTransformer",
    "ResNetConfig",
    "SpatialTransformerNet",
    "TextTransformer",
    "TransformerLM",
    "TransformerLMConfig",
    "UnclipDecoder",
    "UnclipUpsampler",
    "VisionTransformer",
    "VitConfig",
    "create_model",
    "list_models",
    "register_model",
]
