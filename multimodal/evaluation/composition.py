"""Where composition fails in an unCLIP stack: the prior, the decoder, or both.

The stack draws the colour of a held-out colour-shape pair ("a red triangle", never in a training caption) and not its
shape. Two stages could fail, and each is measured on the pairs seen in training and on the held-out ones:

- **the decoder**, fed the CLIP image embeddings of real images of the pair (no prior): does it draw them? The judge
  classifies the decoded images against the real images' classes; the same judge on the real images themselves,
  at the decoder's size, is the ceiling.
- **the prior**, asked for "a {colour} {shape}": do its embeddings land among the real images' embeddings of that
  pair? Each sampled embedding is given the class of the nearest class mean of real image embeddings (all 36 pairs,
  cosine), beside its cosine to its own pair's mean; real embeddings classified the same way (each against the means
  of the others, leaving itself out) are the reference.

A stage composes when its held-out accuracy is at least half its seen-pair accuracy (``COMPOSES``); the verdict
names the stage(s) that do not.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import SampleDecoder, load_card
from ..data.cards import ensure_dataset
from .classification import eval_stream
from .generation import PROMPT_TEMPLATE, Judge, PairJudge, pair_accuracies, prompt_set

__all__ = ["COMPOSES", "class_images", "diagnose_composition", "verdict"]

COMPOSES = 0.5  # held-out accuracy / seen accuracy at or above which a stage is said to compose
SPLIT_OF = {"seen": "test", "heldout": "heldout"}  # the shapes split holding each kind of pair's real images


def class_images(dataset: str, split: str, classes: list[int], per_class: int, size: int) -> tuple[Tensor, Tensor]:
    """The first ``per_class`` images (in [-1, 1], ``size`` px) of each colour-shape class of ``classes`` in
    ``split``, and their labels; a class with fewer images there is a ValueError."""
    card = load_card(dataset)
    ensure_dataset(card)
    decoder = SampleDecoder(
        image_size=size, image_key=card.image_key, label_key="color_shape", mean=(0.5,) * 3, std=(0.5,) * 3
    )
    kept: dict[int, list[Tensor]] = {c: [] for c in classes}
    for batch in eval_stream(card, split, decoder=decoder, batch_size=500):
        for image, label in zip(batch["image"], batch["label"].tolist(), strict=True):
            if label in kept and len(kept[label]) < per_class:
                kept[label].append(image)
        if all(len(v) == per_class for v in kept.values()):
            break
    short = {c: len(v) for c, v in kept.items() if len(v) < per_class}
    if short:
        raise ValueError(f"{split} has fewer than {per_class} images of classes {short} (class: images found)")
    labels = torch.tensor([c for c in classes for _ in range(per_class)])
    return torch.stack([image for c in classes for image in kept[c]]), labels


def _accuracies(pred: Tensor, label: Tensor) -> dict[str, float]:
    return {**pair_accuracies(pred, label), "n": len(label)}


@torch.no_grad()
def diagnose_composition(
    pipe: Any,
    judge: Judge | PairJudge,
    *,
    n: int = 8,
    steps: int = 25,
    prior_guidance: float = 4.0,
    decoder_guidance: float = 3.0,
    seed: int = 0,
    dataset: str = "shapes",
    upsample: bool = True,
    batch: int = 48,
) -> dict[str, Any]:
    """The measurements of the module docstring, per kind of pair ("seen", "heldout"), and the verdict."""
    pairs = dict(zip(("seen", "heldout"), prompt_set(dataset), strict=True))
    names = load_card(dataset).class_names("color_shape")
    side, device = pipe.clip.clip.cfg.vision.img_size, pipe._execution_device
    real: dict[str, tuple[Tensor, Tensor]] = {}  # kind -> (images, labels)
    embeds: dict[str, Tensor] = {}
    for kind, prompts in pairs.items():
        real[kind] = class_images(dataset, SPLIT_OF[kind], [c for _, c in prompts], n, side)
        embeds[kind] = torch.cat([pipe.image_embeddings(x) for x in real[kind][0].split(batch)]).cpu()
    all_embeds = torch.cat([embeds[k] for k in pairs])
    all_labels = torch.cat([real[k][1] for k in pairs])
    means = F.normalize(torch.stack([all_embeds[all_labels == c].mean(0) for c in range(len(names))]), dim=-1)
    results: dict[str, Any] = {"n_per_pair": n, "steps": steps, "seed": seed, "prior_guidance": prior_guidance,
                               "decoder_guidance": decoder_guidance}  # fmt: skip
    for kind in pairs:
        images, labels = real[kind]
        generator = torch.Generator().manual_seed(seed)
        decoded, ceiling, sampled = [], [], []
        for rows in torch.arange(len(labels)).split(batch):
            prompt = [PROMPT_TEMPLATE.format(names[int(labels[i])]) for i in rows]
            text, enc, pad = pipe.encode_prompt(prompt)
            out = pipe.decode(embeds[kind][rows], enc, pad, decoder_guidance_scale=decoder_guidance,
                              num_inference_steps=steps, upsample=upsample, generator=generator)  # fmt: skip
            decoded.append(judge(out)[0].cpu())
            size = out.shape[-1]
            small = F.interpolate(images[rows], size=(size, size), mode="bilinear", antialias=True)
            ceiling.append(judge(small.to(device))[0].cpu())
            sample = pipe.prior.sample(text, enc, pad, guidance_scale=prior_guidance, num_inference_steps=steps,
                                       sampler=pipe.prior_scheduler, generator=generator)  # fmt: skip
            sampled.append(sample.float().cpu())
        prior = F.normalize(torch.cat(sampled), dim=-1)
        own = means[labels]
        loo = _leave_one_out_classes(embeds[kind], labels, all_embeds, all_labels)
        results[kind] = {
            "decoder_from_real_embeddings": _accuracies(torch.cat(decoded), labels),
            "real_images": _accuracies(torch.cat(ceiling), labels),
            "prior_nearest_class": {
                **_accuracies((prior @ means.T).argmax(-1), labels),
                "cosine_to_own_pair": (prior * own).sum(-1).mean().item(),
            },
            "real_embeddings_nearest_class": {
                **_accuracies(loo, labels),
                "cosine_to_own_pair": (F.normalize(embeds[kind], dim=-1) * own).sum(-1).mean().item(),
            },
        }
    results["verdict"] = verdict(results)
    return results


def _leave_one_out_classes(embeds: Tensor, labels: Tensor, all_embeds: Tensor, all_labels: Tensor) -> Tensor:
    """The nearest class mean of each embedding, its own class's mean taken without it."""
    classes = int(all_labels.max()) + 1
    sums = torch.zeros(classes, all_embeds.shape[1]).index_add_(0, all_labels, all_embeds)
    counts = torch.bincount(all_labels, minlength=classes).float()
    preds = []
    for e, c in zip(embeds, labels.tolist(), strict=True):
        s, k = sums.clone(), counts.clone()
        s[c] -= e
        k[c] -= 1
        preds.append((F.normalize(s / k.clamp(min=1)[:, None], dim=-1) @ e).argmax())
    return torch.stack(preds)


def verdict(results: dict[str, Any]) -> str:
    """Which stage fails to compose: its held-out accuracy is under ``COMPOSES`` times its seen-pair accuracy."""
    failing = []
    for stage, key in (("decoder", "decoder_from_real_embeddings"), ("prior", "prior_nearest_class")):
        seen, held = results["seen"][key]["accuracy"], results["heldout"][key]["accuracy"]
        if held < COMPOSES * seen:
            failing.append(f"the {stage} ({held:.3f} on held-out pairs against {seen:.3f} on seen ones)")
    if not failing:
        return "both stages compose: each reaches at least half its seen-pair accuracy on the held-out pairs"
    return "fails to compose: " + " and ".join(failing)
