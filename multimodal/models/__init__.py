"""Model families; importing this package registers every model with ``create_model``."""

from .registry import create_model, list_models, register_model
from .vit import VisionTransformer, VitConfig

__all__ = ["VisionTransformer", "VitConfig", "create_model", "list_models", "register_model"]
