"""Transformer circuits on the shared backbone (Elhage et al. 2021): per-head weights read out of the fused layers,
QK and OV circuits as factored matrices, composition and copying scores. Activations come from the hook points of
:mod:`multimodal.nn.hooks`."""

from .composition import composition_baseline, composition_scores, copying_scores
from .factored import FactoredMatrix
from .weights import HeadWeights, head_weights

__all__ = [
    "FactoredMatrix",
    "HeadWeights",
    "composition_baseline",
    "composition_scores",
    "copying_scores",
    "head_weights",
]
