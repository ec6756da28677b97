"""SigLIP's pairwise sigmoid loss (Zhai et al. 2023), exact across data-parallel ranks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .clip import check_features
from .distributed import check_rank_world, neighbour_exchange_with_grad, resolve_rank_world

SIGLIP_INIT_LOGIT_SCALE = math.log(10.0)  # the model stores log(scale); exp() gives a scale of 10
SIGLIP_INIT_LOGIT_BIAS = -10.0


def sigmoid_pair_loss(
    image_features: Tensor, text_features: Tensor, logit_scale: Tensor, logit_bias: Tensor, *, positives: bool
) -> Tensor:
    """Sum of -log sigmoid(label * logit) over the (B_img, B_txt) pairs; labels are +1 on the diagonal when
    ``positives`` (the texts are the images' own captions), -1 everywhere else."""
    logits = logit_scale * image_features @ text_features.T + logit_bias  # (B, B)
    labels = -torch.ones_like(logits)  # (B, B)
    if positives:
        labels.fill_diagonal_(1.0)
    return -F.logsigmoid(labels * logits).sum()


class SigLipLoss(nn.Module):
    """Independent binary classification of every image-text pair, divided by the local batch size.

    ``forward(image_features, text_features, logit_scale, logit_bias)`` takes L2-normalised (B, D)
    features, the already-exponentiated scale and the bias. Across ranks each rank scores its B images
    against its own texts (with positives) and, as negatives only, against every other rank's texts,
    which travel around the ring of ranks with their gradients: ``bidir=True`` passes them both ways
    at once (world - 1 texts in about world / 2 steps), ``bidir=False`` only to rank + 1. The loss
    averaged over ranks, and parameter gradients averaged over ranks as DDP does, equal those of one
    process on the concatenated batch. All ranks must pass the same B.
    """

    def __init__(self, *, rank: int | None = None, world_size: int | None = None, bidir: bool = True) -> None:
        super().__init__()
        check_rank_world(rank, world_size)
        self.rank = rank
        self.world_size = world_size
        self.bidir = bidir

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        logit_bias: Tensor,
        output_dict: bool = False,
    ) -> Tensor | dict[str, Tensor]:
        """Sigmoid loss of this rank's images against all texts; ``{"contrastive_loss": loss}`` if output_dict."""
        check_features(image_features, text_features, logit_scale=logit_scale, logit_bias=logit_bias)
        rank, world_size = resolve_rank_world(self.rank, self.world_size)
        loss = sigmoid_pair_loss(image_features, text_features, logit_scale, logit_bias, positives=True)
        for texts in self.other_ranks_texts(text_features, rank, world_size):
            loss = loss + sigmoid_pair_loss(image_features, texts, logit_scale, logit_bias, positives=False)
        loss = loss / image_features.shape[0]
        return {"contrastive_loss": loss} if output_dict else loss

    def other_ranks_texts(self, text_features: Tensor, rank: int, world_size: int) -> list[Tensor]:
        """The (B, D) texts of the world - 1 other ranks, received from the neighbours with gradient."""
        left, right = (rank - 1) % world_size, (rank + 1) % world_size
        received: list[Tensor] = []
        to_left = to_right = text_features
        if self.bidir:
            # Each step sends the last texts that came from the right on to the left, and vice versa.
            for _ in range((world_size - 1) // 2):
                to_left, to_right = neighbour_exchange_with_grad(
                    (to_left, to_right), dsts=(left, right), srcs=(right, left)
                )
                received += [to_left, to_right]
        while len(received) < world_size - 1:  # the rest (all when not bidir) shift one rank to the right
            (to_right,) = neighbour_exchange_with_grad((to_right,), dsts=(right,), srcs=(left,))
            received.append(to_right)
        return received
