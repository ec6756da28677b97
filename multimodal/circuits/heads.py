"""What heads do on a batch: attention-pattern scores, head ablation, and activation patching.

Scores read the patterns ``run_with_cache`` records at ``attn.hook_pattern``, stacked (L, B, H, N, N):

* previous-token: mean attention from position i to i - 1;
* duplicate-token and induction, on sequences whose second half repeats the first (``period`` tokens apart, as
  :func:`repeated_tokens` makes them): from each position of the repeat to the same token's earlier occurrence
  (i - period), and to the token after it (i - period + 1), which the head copies from (Olsson et al. 2022).

Interventions take ``model`` (where the hooks go) and ``forward`` (a callable running it on some input and returning
the output a ``metric`` reads), so one function serves any family: a CLIP text tower, a ViT, GATO.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..nn.hooks import block_order, hook_points, hooks, run_with_cache

__all__ = [
    "ablate_heads",
    "attention_patterns",
    "duplicate_token_scores",
    "induction_scores",
    "patch_heads",
    "patch_residual",
    "previous_token_scores",
    "repeated_tokens",
]


def repeated_tokens(
    batch: int,
    period: int,
    vocab: int,
    *,
    low: int = 0,
    prefix: Sequence[int] = (),
    generator: torch.Generator | None = None,
) -> Tensor:
    """(B, len(prefix) + 2 * period) token ids: ``prefix``, then ``period`` ids uniform in [low, vocab) (``low=1``
    keeps a BOS id 0 out), then the same again."""
    if period < 2 or vocab - low < 2:
        raise ValueError(f"repeated_tokens needs period >= 2 and vocab - low >= 2, got period={period}, vocab={vocab}")
    first = torch.randint(low, vocab, (batch, period), generator=generator)
    start = torch.tensor(list(prefix), dtype=torch.long).expand(batch, -1)
    return torch.cat([start, first, first], dim=1)


def attention_patterns(model: nn.Module, *args: Any, **kwargs: Any) -> Tensor:
    """(L, B, H, N, M) attention patterns of every block of ``model(*args, **kwargs)``, in block order."""
    _, cache = run_with_cache(model, *args, names_filter=lambda name: name.endswith("attn.hook_pattern"), **kwargs)
    if not cache:
        raise ValueError(f"{type(model).__name__} has no hook points named attn.hook_pattern")
    return cache.stack("attn.hook_pattern")


def _stripe(patterns: Tensor, offset: int, start: int) -> Tensor:
    """(L, H) mean attention along the diagonal ``offset`` (key = query + offset), over queries >= ``start``."""
    stripe = patterns.diagonal(offset=offset, dim1=-2, dim2=-1)  # (L, B, H, N - |offset|): query -offset+j, key j
    first_query = -offset if offset < 0 else 0
    keep = stripe[..., max(0, start - first_query) :]
    if keep.shape[-1] == 0:
        raise ValueError(f"no query position >= {start} has a key at offset {offset}; the sequences are too short")
    return keep.mean(dim=(1, 3))


def previous_token_scores(patterns: Tensor) -> Tensor:
    """(L, H) mean attention from each position to the one before it (positions 1 onward)."""
    return _stripe(patterns, -1, 1)


def duplicate_token_scores(patterns: Tensor, period: int, *, prefix: int = 0) -> Tensor:
    """(L, H) mean attention from each token of the repeat to its earlier occurrence ``period`` back."""
    return _stripe(patterns, -period, prefix + period)


def induction_scores(patterns: Tensor, period: int, *, prefix: int = 0) -> Tensor:
    """(L, H) mean attention from each token of the repeat to the token after its earlier occurrence (offset
    1 - period): the token an induction head copies as its prediction of what comes next."""
    return _stripe(patterns, 1 - period, prefix + period)


def _points(model: nn.Module, suffix: str) -> list[str]:
    """The hook points of ``model`` whose names end with ``suffix``, in block order."""
    names = [n for n in hook_points(model) if n.endswith(suffix)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no hook points named {suffix}")
    return sorted(names, key=block_order)


def _z_points(model: nn.Module) -> list[str]:
    return _points(model, "attn.hook_z")


def ablate_heads(
    model: nn.Module,
    forward: Callable[[], Any],
    heads: Sequence[tuple[int, int]],
    *,
    mode: Literal["zero", "mean"] = "zero",
) -> Any:
    """``forward()`` with the listed (layer, head) outputs removed: their z set to zero, or (``mode="mean"``) to
    their mean over this batch's examples and positions from an unablated run of the same ``forward``."""
    names = _z_points(model)
    if mode not in ("zero", "mean"):
        raise ValueError(f"ablation mode must be 'zero' or 'mean', got {mode!r}")
    for layer, head in heads:
        if not 0 <= layer < len(names):
            raise ValueError(f"layer {layer} out of range: the model has {len(names)} attention layers")
        count = model.get_submodule(names[layer].removesuffix(".hook_z")).heads
        if not 0 <= head < count:
            raise ValueError(f"head {head} out of range: layer {layer} has {count} heads")
    means: dict[str, Tensor] = {}
    if mode == "mean":
        with hooks(model, [(names, lambda z, hook: means.__setitem__(hook.name, z.mean(dim=(0, 1)).detach()))]):
            forward()
    by_layer: dict[str, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(names[layer], []).append(head)

    def ablate(z: Tensor, hook) -> Tensor:  # (B, N, H, D)
        z = z.clone()
        for head in by_layer[hook.name]:
            z[:, :, head] = 0.0 if mode == "zero" else means[hook.name][head]
        return z

    with hooks(model, [(list(by_layer), ablate)]):
        return forward()


def _normalised(value: float, clean: float, corrupted: float) -> float:
    return (value - corrupted) / (clean - corrupted) if clean != corrupted else float("nan")


def _patch_each(
    model: nn.Module,
    suffix: str,
    dim: int,
    forward: Callable[[Any], Any],
    clean: Any,
    corrupted: Any,
    metric: Callable,
) -> Tensor:
    """(L, K) normalised metric of the corrupted run with slice k along ``dim`` of layer l's ``suffix`` activation
    taken from the clean run."""
    names = _points(model, suffix)
    cache: dict[str, Tensor] = {}
    with hooks(model, [(names, lambda x, hook: cache.__setitem__(hook.name, x.detach()))]):
        clean_metric = metric(forward(clean))
    corrupted_metric = metric(forward(corrupted))
    out = torch.empty(len(names), cache[names[0]].shape[dim])
    for layer, name in enumerate(names):
        for k in range(out.shape[1]):

            def patch(x: Tensor, hook, k: int = k) -> Tensor:
                x = x.clone()
                x.select(dim, k).copy_(cache[hook.name].select(dim, k))
                return x

            with hooks(model, [(name, patch)]):
                out[layer, k] = _normalised(metric(forward(corrupted)), clean_metric, corrupted_metric)
    return out


def patch_residual(
    model: nn.Module,
    forward: Callable[[Any], Any],
    clean: Any,
    corrupted: Any,
    metric: Callable[[Any], float],
) -> Tensor:
    """(L, N) normalised metric of the corrupted run with block l's input stream at position p taken from the clean
    run: 1 where that one vector restores the clean metric, 0 where it changes nothing. ``forward(inputs)`` runs
    the model on ``clean`` or ``corrupted`` (same sequence length)."""
    return _patch_each(model, "hook_resid_pre", 1, forward, clean, corrupted, metric)  # (B, N, C): positions


def patch_heads(
    model: nn.Module,
    forward: Callable[[Any], Any],
    clean: Any,
    corrupted: Any,
    metric: Callable[[Any], float],
) -> Tensor:
    """(L, H) normalised metric of the corrupted run with one head's output (its z, every position) taken from the
    clean run."""
    return _patch_each(model, "attn.hook_z", 2, forward, clean, corrupted, metric)  # (B, N, H, D): heads
