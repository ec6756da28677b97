"""Zero-shot classification of a CLIP model: class names and prompt templates from a dataset card, metrics per split
beside chance level.

The metrics are CLIP_benchmark's (``clip_benchmark.metrics.zeroshot_classification``): ``top1`` is its ``acc1``,
``top5`` its ``acc5`` (it reports NaN for fewer than five classes, where this gives ``topK``, K the class count), and
``mean_per_class_recall`` its namesake, scikit-learn's balanced accuracy: the mean top-1 recall over the classes
present among the labels. Both build the classifier alike (each class: the normalised mean of its normalised prompt
embeddings; logits 100 x cosine).
"""

from __future__ import annotations

import re

from accelerate import Accelerator
from torch import nn

from ..data import SampleDecoder, make_loader
from ..data.benchmark import card_prompts
from ..data.cards import DatasetCard
from ..pipelines.zeroshot import ZeroShotClassifier
from .classification import eval_stream, evaluate_classifier

__all__ = ["card_prompts", "topk_key", "zeroshot_evaluate"]


def zeroshot_evaluate(
    model: nn.Module,
    tokenizer,
    card: DatasetCard,
    *,
    splits: list[str],
    label: str,
    decoder: SampleDecoder,
    acc: Accelerator | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    templates: str | None = None,
) -> dict[str, dict[str, float]]:
    """Zero-shot metrics per split, each rank evaluating its share and results gathered on all ranks."""
    classnames, prompts = card_prompts(card, label, templates)
    was_training = model.training
    model.eval()
    classifier = ZeroShotClassifier(model, tokenizer, classnames, prompts)
    rank, world = (acc.process_index, acc.num_processes) if acc is not None else (0, 1)
    results = {}
    for split in splits:
        stream = eval_stream(card, split, decoder=decoder, batch_size=batch_size, rank=rank, world_size=world)
        metrics, skips = evaluate_classifier(
            classifier, make_loader(stream, num_workers=num_workers), num_classes=len(classnames), acc=acc
        )
        k = topk_key(metrics)  # top5, or topK with K < 5 classes
        metrics["chance_top1"] = 1.0 / len(classnames)
        metrics[f"chance_{k}"] = int(k[3:]) / len(classnames)
        metrics["skipped_samples"] = skips.total
        results[split] = metrics
    model.train(was_training)
    return results


def topk_key(metrics: dict[str, float]) -> str:
    """The top-k metric beside top1: ``top5``, or ``topK`` with K < 5 classes (``top1`` itself with one class)."""
    return next((key for key in metrics if re.fullmatch(r"top\d+", key) and key != "top1"), "top1")
