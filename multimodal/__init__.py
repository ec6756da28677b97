"""Multimodal foundation models on one shared transformer backbone.

The names below are imported on first use (see ``_lazy.py``): ``import multimodal`` alone loads neither torch nor
the model families.
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

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
_EXPORTS = {
    "Config": ".config",
    "ConfigError": ".config",
    "ImageTransform": ".data.transforms",
    "create_model": ".models",
    "list_models": ".models",
    "register_model": ".models",
    "get_tokenizer": ".runs",
    "load_checkpoint": ".runs",
    "load_model_and_transforms": ".runs",
    "load_unclip_pipeline": ".runs",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .config import Config, ConfigError
    from .data.transforms import ImageTransform
    from .models import create_model, list_models, register_model
    from .runs import get_tokenizer, load_checkpoint, load_model_and_transforms, load_unclip_pipeline
