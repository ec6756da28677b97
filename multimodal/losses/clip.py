"""CLIP's symmetric InfoNCE loss (Radford et al. 2021), exact across data-parallel ranks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distributed import all_gather_no_grad, all_gather_with_grad, check_rank_world, resolve_rank_world


def check_features(image_features: Tensor, text_features: Tensor, **scalars: Tensor) -> None:
    """Raise ValueError unless the features are matching (B, D) tensors and every named scalar has one element."""
    if image_features.ndim != 2 or image_features.shape != text_features.shape:
        raise ValueError(
            "image and text features must both be (B, D) with the same B and D, got "
            f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
        )
    for name, value in scalars.items():
        if not isinstance(value, Tensor) or value.numel() != 1:
            raise ValueError(f"{name} must be a one-element tensor, got {value!r}")


class ClipLoss(nn.Module):
    """Cross-entropy over image-text similarities, averaged over both directions.

    ``forward(image_features, text_features, logit_scale)`` takes L2-normalised (B, D) features and the
    already-exponentiated scale. Across ranks the features of the other modality are gathered, so every
    rank's B images and texts are contrasted against all N = world * B candidates.

    With the default ``local_loss=True, gather_with_grad=True`` each rank computes only its own B rows of
    (B, N) logits in each direction (memory O(B * N)), with labels ``arange(B) + rank * B``, and the
    gather sends gradients back to the rank that produced each feature. Averaging parameter gradients
    over ranks, as DDP does, then gives exactly the loss and gradients of one process on the
    concatenated batch. ``local_loss=False, gather_with_grad=True`` is exact too, at O(N^2) memory.

    ``gather_with_grad=False`` gathers detached copies (open_clip semantics): with ``local_loss=False``
    the local slice is swapped for the grad-carrying features and each rank computes the full (N, N)
    loss, which scales encoder gradients by 1 / world relative to logit_scale's; with ``local_loss=True``
    no slice is swapped, so a feature gets gradient only through its own row, never as a candidate.
    Neither is exact. All ranks (of the default process group) must pass the same B.
    """

    def __init__(
        self,
        *,
        local_loss: bool = True,
        gather_with_grad: bool = True,
        cache_labels: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        check_rank_world(rank, world_size)
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels
        self.rank = rank
        self.world_size = world_size
        self._labels: tuple[tuple[int, int, torch.device], Tensor] | None = None

    def labels(self, num: int, offset: int, device: torch.device) -> Tensor:
        """Targets ``arange(num) + offset`` on ``device``, reused across calls when cache_labels."""
        key = (num, offset, device)
        if self._labels is not None and self._labels[0] == key:
            return self._labels[1]
        labels = torch.arange(offset, offset + num, device=device)
        if self.cache_labels:
            self._labels = (key, labels)
        return labels

    def logits(
        self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor, *, rank: int, world_size: int
    ) -> tuple[Tensor, Tensor, int]:
        """(logits_per_image, logits_per_text, label offset) for this rank's rows."""
        if world_size == 1:
            logits_per_image = logit_scale * image_features @ text_features.T  # (B, B)
            return logits_per_image, logits_per_image.T, 0
        if self.gather_with_grad:
            all_images = all_gather_with_grad(image_features)  # (N, D)
            all_texts = all_gather_with_grad(text_features)  # (N, D)
        else:
            images, texts = all_gather_no_grad(image_features), all_gather_no_grad(text_features)
            if not self.local_loss:
                images[rank], texts[rank] = image_features, text_features
            all_images, all_texts = torch.cat(images), torch.cat(texts)  # (N, D)
        if self.local_loss:
            logits_per_image = logit_scale * image_features @ all_texts.T  # (B, N)
            logits_per_text = logit_scale * text_features @ all_images.T  # (B, N)
            return logits_per_image, logits_per_text, rank * image_features.shape[0]
        logits_per_image = logit_scale * all_images @ all_texts.T  # (N, N)
        return logits_per_image, logits_per_image.T, 0

    def forward(
        self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor, output_dict: bool = False
    ) -> Tensor | dict[str, Tensor]:
        """Mean of image->text and text->image cross-entropy; ``{"contrastive_loss": loss}`` if output_dict."""
        check_features(image_features, text_features, logit_scale=logit_scale)
        rank, world_size = resolve_rank_world(self.rank, self.world_size)
        logits_per_image, logits_per_text, offset = self.logits(
            image_features, text_features, logit_scale, rank=rank, world_size=world_size
        )
        labels = self.labels(logits_per_image.shape[0], offset, image_features.device)
        loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
        return {"contrastive_loss": loss} if output_dict else loss
