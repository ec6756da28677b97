"""Multimodal foundation models on one shared transformer backbone."""

from .config import Config, ConfigError
from .data.transforms import ImageTransform
from .models import create_model, list_models, register_model
from .runs import get_tokenizer, load_checkpoint, load_model_and_transforms, load_unclip_pipeline

__version__ = "0.1.0"
__all__ = [
    "Config",
    "ConfigError",
    "ImageTransform",
    "create_model",
    "get_tokenizer",
    "list_models",
    "load_checkpoint",
    "load_model_and_transforms",
    "load_unclip_pipeline",
    "register_model",
]
