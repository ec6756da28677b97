"""Image classification: one ordered pass over a split, and top-1, top-5 and mean per-class recall of a classifier."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from ..data import SampleDecoder, SampleStream, SkipStats, collate
from ..data.cards import DatasetCard
from ..data.stream import folder_samples
from .metrics import classification_metrics, gather_rows

__all__ = ["eval_stream", "evaluate_classifier"]


def eval_stream(
    card: DatasetCard,
    split: str,
    *,
    decoder: SampleDecoder,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
) -> SampleStream:
    """One ordered pass over a split, this rank's share of it."""
    source: dict[str, Any] = (
        {"items": folder_samples(card.folder(split))} if card.format == "folder" else {"urls": card.shard_urls(split)}
    )
    return SampleStream(
        **source,
        decode=decoder,
        collate=collate,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        infinite=False,
        shuffle_buffer=0,
    )


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    batches: Iterable[dict[str, Any]],
    *,
    num_classes: int,
    acc: Accelerator | None = None,
    progress: bool = False,
) -> tuple[dict[str, float], SkipStats]:
    """Metrics over all processes' batches (each process passes its own share)."""
    was_training = model.training
    model.eval()
    device = acc.device if acc is not None else next(model.parameters()).device
    k = min(5, num_classes)
    preds, labels, skips = [], [], SkipStats()
    for batch in tqdm(batches, desc="eval", disable=not progress, leave=False):
        skips.update(batch.pop("skipped"))
        if not batch["size"]:
            continue
        images = batch["image"].to(device, non_blocking=True)
        if acc is not None:
            with acc.autocast():
                logits = model(images)
        else:
            logits = model(images)
        preds.append(logits.float().topk(k, dim=-1).indices.cpu())
        labels.append(batch["label"])
    model.train(was_training)
    pred = torch.cat(preds) if preds else torch.zeros(0, k, dtype=torch.long)
    label = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    pred, label = gather_rows(acc, pred), gather_rows(acc, label)
    return classification_metrics(pred, label, num_classes), skips
