"""GATO captioning judged by the objects in the image: a caption is right when the (colour, shape) pairs it names
include the image's main object and name nothing that is not in the image
(``multimodal.pipelines.gato.judge_caption``). Captions are greedy."""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from ..config import ConfigError
from ..data import SampleDecoder, SampleStream, SkipStats, collate, make_loader
from ..data.cards import DatasetCard
from ..data.stream import DecodeError
from ..pipelines.gato import Task, caption_images, judge_caption, named_pairs
from ..tokenizers.gato import GatoTokenizer

__all__ = ["evaluate_captioning"]


class _WithObjects:
    """Decode the image in [0, 1] and read the objects' (colour, shape) from the sample's .json."""

    def __init__(self, image_size: int, image_key: str | None = None) -> None:
        self.decode = SampleDecoder(
            image_size=image_size, image_key=image_key, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)
        )

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = self.decode(sample)
        try:
            meta = json.loads(sample["json"])
            out["objects"] = [(o["color"], o["shape"]) for o in meta["objects"]]
        except (KeyError, TypeError, ValueError):
            raise DecodeError("missing objects", "the sample's .json has no objects list") from None
        return out


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    batch = collate(samples)
    batch["objects"] = [s["objects"] for s in samples]
    return batch


@torch.no_grad()
def evaluate_captioning(
    model: nn.Module,
    tokenizer: GatoTokenizer,
    card: DatasetCard,
    split: str,
    *,
    samples: int,
    image_size: int,
    batch_size: int = 100,
    task: Task = None,
) -> tuple[dict[str, Any], SkipStats]:
    """Caption the first ``samples`` images of ``split`` and judge each against its objects; ``task`` routes
    task-routed experts (:func:`~multimodal.pipelines.gato.route`)."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    colours, shapes = card.labels.get("color"), card.labels.get("shape")
    if not colours or not shapes:
        raise ConfigError(f"dataset {card.name!r} has no color and shape labels to judge captions by")
    stream = SampleStream(
        urls=card.shard_urls(split), decode=_WithObjects(image_size, card.image_key), collate=_collate,
        batch_size=min(batch_size, samples), infinite=False, shuffle_buffer=0,
    )  # fmt: skip
    skips, right, colour_right, shape_right, examples, n = SkipStats(), 0, 0, 0, [], 0
    for batch in make_loader(stream, num_workers=0):
        skips.update(batch.pop("skipped"))
        if not batch["size"]:  # every sample of the batch was unusable
            continue
        keep = min(len(batch["key"]), samples - n)
        captions = caption_images(model, tokenizer, batch["image"][:keep], task=task)
        for caption, objects, key in zip(captions, batch["objects"][:keep], batch["key"][:keep], strict=True):
            ok = judge_caption(caption, objects, colours, shapes)
            pairs = named_pairs(caption, colours, shapes)  # parsed once for the colour and shape shares
            right += ok
            colour_right += objects[0][0] in {c for c, _ in pairs}
            shape_right += objects[0][1] in {s for _, s in pairs}
            if len(examples) < 8:
                examples.append({"key": key, "caption": caption, "objects": [list(o) for o in objects], "right": ok})
        n += keep
        if n >= samples:
            break
    if n == 0:
        raise ValueError(f"no decodable samples in {card.name}/{split}")
    return {
        "split": split,
        "n": n,
        "accuracy": right / n,
        "colour_named": colour_right / n,
        "shape_named": shape_right / n,
        "examples": examples,
    }, skips
