"""Zero-shot classification of a CLIP model: class names and prompt templates from a dataset card, metrics per split
beside chance level."""

from __future__ import annotations

import re

from accelerate import Accelerator
from torch import nn

from ..config import ConfigError
from ..data import SampleDecoder, make_loader
from ..data.cards import DatasetCard
from ..pipelines.zeroshot import ZeroShotClassifier, imagenet_classnames, imagenet_templates
from .classification import eval_stream, evaluate_classifier

__all__ = ["card_prompts", "topk_key", "zeroshot_evaluate"]


def card_prompts(card: DatasetCard, label: str, templates: str | None = None) -> tuple[list[str], list[str]]:
    """Class names and templates for zero-shot: the card's, or ImageNet's for a WordNet-id image folder."""
    names = list(card.class_names(label))
    wordnet = len(names) == 1000 and all(re.fullmatch(r"n\d{8}", n) for n in names)
    if wordnet:
        names = imagenet_classnames()
    if templates in ("openai", "simple"):
        return names, imagenet_templates(templates)
    if templates is not None:
        raise ConfigError(f"--templates must be 'openai', 'simple' or omitted (the card's), got {templates!r}")
    return names, imagenet_templates("openai") if wordnet else list(card.templates)


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
