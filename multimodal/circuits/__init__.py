"""Transformer circuits on the shared backbone (Elhage et al. 2021): per-head weights read out of the fused layers,
QK and OV circuits as factored matrices, composition and copying scores. Activations come from the hook points of
:mod:`multimodal.nn.hooks`; :func:`to_hooked_transformer` takes a TransformerLM into TransformerLens."""

from .composition import composition_baseline, composition_scores, copying_scores
from .factored import FactoredMatrix
from .heads import (
    ablate_heads,
    attention_patterns,
    duplicate_token_scores,
    induction_scores,
    patch_heads,
    patch_residual,
    previous_token_scores,
    repeated_tokens,
)
from .interop import to_hooked_transformer, transformer_lens_name
from .weights import HeadWeights, head_weights

__all__ = [
    "FactoredMatrix",
    "HeadWeights",
    "ablate_heads",
    "attention_patterns",
    "composition_baseline",
    "composition_scores",
    "copying_scores",
    "duplicate_token_scores",
    "head_weights",
    "induction_scores",
    "patch_heads",
    "patch_residual",
    "previous_token_scores",
    "repeated_tokens",
    "to_hooked_transformer",
    "transformer_lens_name",
]
