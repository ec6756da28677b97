"""Exact large-batch contrastive gradients in chunks (GradCache, Gao et al. 2021).

A contrastive loss couples every sample with every other, so plain gradient accumulation over chunks
changes the loss. Gradient caching keeps the full-batch loss at the memory of one chunk:

1. encode every chunk without grad, recording the RNG state before each (so dropout can replay);
2. compute the loss on the concatenated (G * B, D) features as grad-requiring leaves and backpropagate it,
   which gives d loss / d features (and the gradient of any parameter the loss itself uses, such as
   logit_scale);
3. encode each chunk again with grad under its recorded RNG state and backpropagate its slice of the
   feature gradient into the encoders, accumulating parameter gradients.

Memory is one chunk's activations plus the G * B feature vectors, at the cost of a second forward.
The result equals one backward of the whole batch for models without batch-dependent layers:
BatchNorm statistics see one chunk at a time, not the full batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

import torch
from torch import Tensor

Chunk = TypeVar("Chunk")


def split_batch(batch: Mapping[str, Any], chunks: int) -> list[dict[str, Any]]:
    """Split every value of ``batch`` (tensors, lists, anything sliceable along dim 0) into ``chunks`` equal parts."""
    if chunks < 1:
        raise ValueError(f"chunks must be >= 1, got {chunks}")
    try:
        sizes = {key: len(value) for key, value in batch.items()}
    except TypeError as error:
        raise ValueError(f"every batch entry must have a leading batch dimension to split: {error}") from None
    if len(set(sizes.values())) != 1:
        raise ValueError(f"every batch entry needs the same leading size to be split, got {sizes}")
    size = next(iter(sizes.values()))
    if size % chunks:
        raise ValueError(f"batch size {size} is not divisible by {chunks} chunks; pick a divisor of {size}")
    step = size // chunks
    return [{key: value[i * step : (i + 1) * step] for key, value in batch.items()} for i in range(chunks)]


class _RngState:
    """CPU and (when initialised) CUDA generator states, to replay a forward's randomness."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def _check_pair(features: tuple[Tensor, Tensor], index: int) -> tuple[Tensor, Tensor]:
    if not (isinstance(features, tuple | list) and len(features) == 2):
        raise ValueError(f"encode must return (image_features, text_features), got {type(features)} for chunk {index}")
    image, text = features
    if image.ndim != 2 or text.ndim != 2 or image.shape[0] != text.shape[0]:
        raise ValueError(
            f"encode must return two (B, D) tensors with the same B, got {tuple(image.shape)} and "
            f"{tuple(text.shape)} for chunk {index}"
        )
    return image, text


def cached_contrastive_backward(
    encode: Callable[[Chunk], tuple[Tensor, Tensor]],
    chunks: Sequence[Chunk],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    *,
    no_sync: Callable[[], AbstractContextManager[Any]] | None = None,
) -> Tensor:
    """Accumulate into ``.grad`` the gradient of ``loss_fn`` on all chunks' features together; return the loss.

    ``encode(chunk)`` returns the chunk's (image, text) features, (B_c, D) each; ``loss_fn(images, texts)``
    scores the concatenated (sum B_c, D) features and may use parameters of its own (logit_scale), whose
    gradient comes from the loss backward. ``encode`` must be deterministic given the RNG state.

    With ``no_sync`` (e.g. ``ddp_model.no_sync``) every chunk but the last backpropagates inside it, so
    DDP all-reduces once. Parameters used only by ``loss_fn`` never appear in DDP's forward: build DDP
    with ``find_unused_parameters=True`` and average their gradients over ranks yourself (all_reduce,
    then divide by the world size), or run every chunk under no_sync and average all gradients yourself.
    """
    if len(chunks) == 0:
        raise ValueError("cached_contrastive_backward needs at least one chunk")
    states: list[_RngState] = []
    images, texts = [], []
    with torch.no_grad():
        for index, chunk in enumerate(chunks):
            states.append(_RngState())
            image, text = _check_pair(encode(chunk), index)
            images.append(image)
            texts.append(text)
    sizes = [len(image) for image in images]
    all_images = torch.cat(images).requires_grad_()  # (sum B_c, D)
    all_texts = torch.cat(texts).requires_grad_()  # (sum B_c, D)
    del images, texts
    loss = loss_fn(all_images, all_texts)
    loss.backward()
    if all_images.grad is None or all_texts.grad is None:
        raise ValueError("loss_fn must depend on both the image and the text features it is given")
    image_grads = all_images.grad.split(sizes)  # G x (B_c, D)
    text_grads = all_texts.grad.split(sizes)  # G x (B_c, D)

    end_state = _RngState()
    for index, (chunk, state) in enumerate(zip(chunks, states, strict=True)):
        last = index == len(chunks) - 1
        with nullcontext() if last or no_sync is None else no_sync():
            state.restore()
            image, text = _check_pair(encode(chunk), index)
            torch.autograd.backward([image, text], [image_grads[index], text_grads[index]])
    end_state.restore()
    return loss.detach()
