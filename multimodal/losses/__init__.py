"""Contrastive losses (CLIP, SigLIP) that stay exact across data-parallel ranks, and gradient caching."""

from .clip import ClipLoss
from .grad_cache import cached_contrastive_backward, split_batch
from .siglip import SIGLIP_INIT_LOGIT_BIAS, SIGLIP_INIT_LOGIT_SCALE, SigLipLoss

__all__ = [
    "SIGLIP_INIT_LOGIT_BIAS",
    "SIGLIP_INIT_LOGIT_SCALE",
    "ClipLoss",
    "SigLipLoss",
    "cached_contrastive_backward",
    "split_batch",
]
