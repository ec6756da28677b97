"""Model families, registered with ``create_model`` when first looked up (see ``registry.py``); the classes below
are imported on first use."""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

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
_EXPORTS = {
    "CLIP": ".clip",
    "AAResNet": ".aa_resnet",
    "AttentionPool": ".vit",
    "ClipConfig": ".clip",
    "ClipTextConfig": ".clip",
    "ClipVisionConfig": ".clip",
    "DiffusionPrior": ".prior",
    "Gato": ".gato",
    "GatoConfig": ".gato",
    "PriorTransformer": ".prior",
    "ResNetConfig": ".aa_resnet",
    "SpatialTransformerNet": ".stn",
    "TextTransformer": ".clip",
    "TransformerLM": ".lm",
    "TransformerLMConfig": ".lm",
    "UnclipDecoder": ".decoder",
    "UnclipUpsampler": ".decoder",
    "VisionTransformer": ".vit",
    "VitConfig": ".vit",
    "create_model": ".registry",
    "list_models": ".registry",
    "register_model": ".registry",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .aa_resnet import AAResNet, ResNetConfig
    from .clip import CLIP, ClipConfig, ClipTextConfig, ClipVisionConfig, TextTransformer
    from .decoder import UnclipDecoder, UnclipUpsampler
    from .gato import Gato, GatoConfig
    from .lm import TransformerLM, TransformerLMConfig
    from .prior import DiffusionPrior, PriorTransformer
    from .registry import create_model, list_models, register_model
    from .stn import SpatialTransformerNet
    from .vit import AttentionPool, VisionTransformer, VitConfig
