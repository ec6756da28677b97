"""Multimodal foundation models on one shared transformer backbone."""

from .checkpoint import load_checkpoint
from .config import Config, ConfigError
from .models import create_model, list_models, register_model

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "create_model", "list_models", "load_checkpoint", "register_model"]
