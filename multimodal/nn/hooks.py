"""Hook points: named places in a forward pass where an activation can be read or replaced (TransformerLens's idea,
on this suite's backbone).

A :class:`HookPoint` is an identity module a layer passes an activation through (``x = self.hook_q(x)``); its
name is its path in the model (``transformer.blocks.0.attn.hook_q``), the suffixes as TransformerLens names them.
A hook is ``fn(activation, hook) -> Tensor | None``: returning a tensor replaces the activation downstream.

    logits, cache = run_with_cache(model, tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    cache["transformer.blocks.1.attn.hook_pattern"]                          # (B, H, N, M)
    out = run_with_hooks(model, tokens, fwd_hooks=[("transformer.blocks.0.attn.hook_z", zero_head_3)])

Hooks added by these functions are removed when they return, also when the forward raises. With none attached a
hook point is one module call returning its input; layers ask :meth:`HookPoint.active` before computing anything
only a hook would need (the attention pattern, each head's output).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

HookFn = Callable[[Tensor, "HookPoint"], Tensor | None]
NameFilter = str | Iterable[str] | Callable[[str], bool] | None

__all__ = [
    "ActivationCache",
    "HookFn",
    "HookPoint",
    "block_order",
    "hook_points",
    "hooks",
    "run_with_cache",
    "run_with_hooks",
]


class HookPoint(nn.Module):
    """Identity on one activation, where hooks attach. ``name`` is set by :func:`hook_points` (the module path)."""

    def __init__(self) -> None:
        super().__init__()
        self.name: str | None = None
        self._fns: list[HookFn] = []

    def active(self) -> bool:
        """Whether a hook is attached: layers compute what only hooks need (patterns, per-head results) only then."""
        return bool(self._fns)

    def add(self, fn: HookFn) -> Callable[[], None]:
        """Attach ``fn``; returns a function that detaches it."""
        self._fns.append(fn)
        return lambda: self._fns.remove(fn) if fn in self._fns else None

    def forward(self, x: Tensor) -> Tensor:
        for fn in self._fns:
            out = fn(x, self)
            if out is not None:
                if not isinstance(out, Tensor) or out.shape != x.shape:
                    got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                    raise ValueError(
                        f"a hook on {self.name} returned {got}; return None or a tensor of shape {tuple(x.shape)}"
                    )
                x = out
        return x

    def extra_repr(self) -> str:
        return f"{len(self._fns)} hook(s)" if self._fns else ""


def hook_points(model: nn.Module) -> dict[str, HookPoint]:
    """Every hook point of ``model`` by its path, each one's ``name`` set to that path."""
    points = {name: m for name, m in model.named_modules() if isinstance(m, HookPoint)}
    for name, point in points.items():
        point.name = name
    return points


def block_order(name: str) -> list[int | str]:
    """Sort key of a hook-point name in block order: ``blocks.10`` after ``blocks.9``."""
    return [int(part) if part.isdigit() else part for part in name.split(".")]


def _matcher(names: NameFilter) -> Callable[[str], bool]:
    """A hook-point name predicate: None (all), a name, names, or a predicate."""
    if names is None:
        return lambda name: True
    if isinstance(names, str):
        return lambda name: name == names
    if callable(names):
        return names
    wanted = set(names)
    return lambda name: name in wanted


@contextlib.contextmanager
def hooks(model: nn.Module, fwd_hooks: Iterable[tuple[NameFilter, HookFn]]) -> Iterator[nn.Module]:
    """Attach ``(name or filter, fn)`` pairs for the duration of the ``with``; detached on exit, exception or not.

    A name must exist (a misspelt one is an error naming the closest); a filter may match any number of points.
    """
    points = hook_points(model)
    removers: list[Callable[[], None]] = []
    try:
        for names, fn in fwd_hooks:
            if isinstance(names, str) and names not in points:
                raise ValueError(f"no hook point {names!r} in {type(model).__name__}; {_closest(names, points)}")
            match = _matcher(names)
            matched = [point for name, point in points.items() if match(name)]
            removers += [point.add(fn) for point in matched]
        yield model
    finally:
        for remove in reversed(removers):
            remove()


def _closest(name: str, points: dict[str, HookPoint]) -> str:
    suffix = name.rsplit(".", 1)[-1]
    same = [p for p in points if p.endswith("." + suffix) or p == suffix]
    if same:
        return f"points named {suffix!r}: {', '.join(same[:4])}{', ...' if len(same) > 4 else ''}"
    kinds = sorted({p.rsplit(".", 1)[-1] for p in points})
    return f"its hook points are named {', '.join(kinds)}" if kinds else "it has no hook points"


def run_with_hooks(model: nn.Module, *args: Any, fwd_hooks: Iterable[tuple[NameFilter, HookFn]] = (), **kwargs):
    """``model(*args, **kwargs)`` with ``fwd_hooks`` attached for this call only."""
    with hooks(model, fwd_hooks):
        return model(*args, **kwargs)


class ActivationCache(dict):
    """Activations by hook-point name, as :func:`run_with_cache` recorded them; ``stack(suffix)`` stacks one kind
    over the blocks in order, e.g. ``cache.stack("attn.hook_pattern")`` -> (layers, B, H, N, M)."""

    def stack(self, suffix: str) -> Tensor:
        names = [n for n in self if n.endswith("." + suffix)]
        if not names:
            raise KeyError(f"no cached activation ends with {suffix!r}; cached: {', '.join(list(self)[:6])} ...")
        names.sort(key=block_order)
        return torch.stack([self[n] for n in names])


def run_with_cache(
    model: nn.Module, *args: Any, names_filter: NameFilter = None, detach: bool = True, **kwargs
) -> tuple[Any, ActivationCache]:
    """``model(*args, **kwargs)`` and the activations at the hook points ``names_filter`` selects (all by default),
    detached unless ``detach=False``."""
    cache = ActivationCache()

    def record(x: Tensor, hook: HookPoint) -> None:
        cache[hook.name] = x.detach() if detach else x

    with hooks(model, [(names_filter if names_filter is not None else (lambda name: True), record)]):
        out = model(*args, **kwargs)
    return out, cache
