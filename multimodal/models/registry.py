"""Model registry: ``@register_model`` builders, ``create_model(name, **overrides)``, ``list_models()``.

The family modules register their builders when imported; every lookup imports them all first (once), so that
``multimodal.models`` itself can be imported without torch, timm or diffusers.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..config import ConfigError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["FAMILIES", "check_model_name", "create_model", "list_models", "register_model"]

FAMILIES = ("aa_resnet", "clip", "decoder", "gato", "lm", "prior", "stn", "vit")  # modules with @register_model
_MODELS: dict[str, Callable[..., nn.Module]] = {}


def _registered() -> dict[str, Callable[..., nn.Module]]:
    """Every family's builders (importing a family registers it; imports after the first cost nothing)."""
    for family in FAMILIES:
        importlib.import_module(f"{__package__}.{family}")
    return _MODELS


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder ``fn(**overrides) -> nn.Module`` under its function name."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice ({_MODELS[name].__module__} and {fn.__module__})")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _registered() if fnmatch.fnmatch(n, pattern))


def check_model_name(name: str, *, key: str | None = None) -> None:
    """A ConfigError naming the closest registered model unless ``name`` is one; ``key``: where the name was given
    (e.g. ``model.name``), said in the message."""
    if name in _registered():
        return
    where = f" ({key})" if key else ""
    close = difflib.get_close_matches(str(name), _MODELS, n=1, cutoff=0.6)
    hint = (
        f"did you mean {close[0]!r}? (multimodal.list_models() lists them)"
        if close
        else "see multimodal.list_models()"
    )
    raise ConfigError(f"unknown model {name!r}{where}; {hint}")


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build the registered model ``name``; ``overrides`` replace fields of its preset config."""
    check_model_name(name)
    return _MODELS[name](**overrides)
