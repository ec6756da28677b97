"""How heads of different layers compose (Elhage et al. 2021, "Virtual attention heads"), and how each head copies.

The composition score of a later head's matrix M with an earlier head's OV circuit is
``||M^T OV||_F / (||M||_F ||OV||_F)`` written with TransformerLens's row-vector convention as
``||OV_1 @ M_2||_F / (||OV_1||_F ||M_2||_F)``, with M_2:

* Q-composition: the later head's QK (the earlier head's output read by its queries),
* K-composition: the later head's QK^T (read by its keys),
* V-composition: the later head's OV (read by its values).

Scores lie in [0, 1]; :func:`composition_baseline` is the mean score of random matrices of the same shapes (the
paper's reference: how much two unrelated low-rank maps "compose" by chance).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .factored import FactoredMatrix
from .weights import HeadWeights

__all__ = ["composition_baseline", "composition_scores", "copying_scores"]

Mode = Literal["q", "k", "v"]


def _later(weights: HeadWeights, mode: Mode) -> FactoredMatrix:
    if mode == "q":
        return weights.QK
    if mode == "k":
        return weights.QK.T
    if mode == "v":
        return weights.OV
    raise ValueError(f"composition mode must be 'q', 'k' or 'v', got {mode!r}")


def composition_scores(weights: HeadWeights, mode: Mode) -> Tensor:
    """(L, H, L, H): score of head (l1, h1)'s OV with head (l2, h2)'s ``mode`` matrix; NaN where l2 <= l1 (a head
    reads only what earlier layers wrote)."""
    L, H = weights.layers, weights.heads
    ov, later = weights.OV, _later(weights, mode)
    C, D = weights.W_Q.shape[-2:]
    # OV_1 @ M_2 for every pair, factored: (W_V1) (W_O1 @ A_2 @ B_2), inner width D.
    inner = ov.B.reshape(L * H, 1, D, C) @ later.A.reshape(1, L * H, C, D)  # (LH, LH, D, D)
    product = FactoredMatrix(ov.A.reshape(L * H, 1, C, D), inner @ later.B.reshape(1, L * H, D, C))
    scores = product.norm() / (ov.norm().reshape(L * H, 1) * later.norm().reshape(1, L * H))  # (LH, LH)
    scores = scores.reshape(L, H, L, H)
    later_layer = torch.arange(L)[None, None, :, None] > torch.arange(L)[:, None, None, None]  # (L, 1, L, 1)
    return scores.masked_fill(~later_layer.expand(L, H, L, H), float("nan"))


def composition_baseline(d_model: int, d_head: int, *, samples: int = 500, seed: int = 0) -> Tensor:
    """(samples,) composition scores of pairs of random Gaussian low-rank maps of the heads' shapes, sorted: the
    chance level (its mean, spread and percentiles)."""
    gen = torch.Generator().manual_seed(seed)

    def random() -> FactoredMatrix:
        A = torch.randn(samples, d_model, d_head, generator=gen)
        return FactoredMatrix(A, torch.randn(samples, d_head, d_model, generator=gen))

    first, second = random(), random()
    return ((first @ second).norm() / (first.norm() * second.norm())).sort().values


def copying_scores(weights: HeadWeights, W_E: Tensor, W_U: Tensor) -> Tensor:
    """(L, H) eigenvalue copying score of each head's full OV circuit W_E W_V W_O W_U (vocab x vocab): the sum of its
    eigenvalues over the sum of their magnitudes, +1 for a head that copies the attended token, -1 for one that
    suppresses it. ``W_E`` (V, C) embeds tokens into the stream the heads read (normalised, with ``folded`` weights),
    ``W_U`` (C, V) reads the stream out."""
    full = W_E.float() @ weights.OV @ W_U.float()  # factored (L, H, V, V), inner D
    eig = full.eigenvalues()  # (L, H, D)
    return (eig.sum(-1) / eig.abs().sum(-1)).real.float()
