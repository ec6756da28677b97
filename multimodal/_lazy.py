"""Packages that import their submodules on first use, so that a command line's ``--help`` pays for argparse only.

``multimodal``, ``multimodal.data`` and ``multimodal.models`` re-export names from submodules that import torch, timm
and diffusers (seconds on a small CPU). Each such package calls :func:`lazy_exports` with ``{name: submodule}``: the
submodule is imported when the name is first read, and then behaves as a plain attribute.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(module: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``module`` (a package, or a module such as ``training.train``), whose public
    ``name`` lives in ``exports[name]``, a module name relative to the package (``".cards"``)."""
    namespace = importlib.import_module(module).__dict__
    package = namespace["__package__"]  # the package itself, or a module's package

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        namespace[name] = value  # later reads skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
