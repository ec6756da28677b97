"""Text-to-image generation on shapes, judged by an independently trained shapes classifier.

For every colour-shape pair of the shapes card (the pairs seen in training and the held-out ones, reported apart) it
generates ``n`` images from the prompt "a {colour} {shape}" and reports:

- prompt accuracy: the share of images whose colour and shape, judged by a shapes classifier (a :class:`Judge`, 36
  colour-shape classes), match the prompt; colour and shape accuracy apart;
- CLIP score: the cosine of the image's and the prompt's CLIP embeddings (the pipeline's CLIP), beside the same for
  real test images and their captions;
- a Frechet distance to real shapes test images in the judge's penultimate feature space, labelled as such (it is not
  Inception FID; :class:`InceptionFeatures` adds FID with a local torchvision Inception-v3 state dict);
- the paper's ablation (section 5.1): the decoder fed the prior's image embedding versus the CLIP text embedding
  directly, same prompts and seeds.

:func:`mean_over_seeds` merges the results of several sample seeds into means with their spread.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import Tensor, nn

from ..data import SampleDecoder, load_card
from ..data.cards import ensure_dataset
from ..io import atomic_save_image
from ..pipelines.grid import make_grid
from ..pipelines.unclip import to_pil_images
from ..tokenizers import ClipTokenizer
from .classification import eval_stream

__all__ = [
    "InceptionFeatures",
    "Judge",
    "PairJudge",
    "evaluate_generation",
    "frechet_distance",
    "mean_over_seeds",
    "prompt_set",
]

PROMPT_TEMPLATE = "a {}"


def prompt_set(card_name: str = "shapes") -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(prompt, colour-shape class) pairs of the seen and of the held-out combinations."""
    card = load_card(card_name)
    classes = card.class_names("color_shape")
    heldout = {f"{c} {s}" for c, s in (card.heldout_combos or [])}
    seen = [(PROMPT_TEMPLATE.format(name), i) for i, name in enumerate(classes) if name not in heldout]
    held = [(PROMPT_TEMPLATE.format(name), i) for i, name in enumerate(classes) if name in heldout]
    return seen, held


class Judge:
    """A trained shapes classifier (36 colour-shape classes) judging images in [-1, 1] of any size; ``image_size``,
    ``mean`` and ``std`` are the classifier's own preprocessing."""

    def __init__(
        self,
        model: nn.Module,
        *,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str = "cpu",
    ) -> None:
        self.model = model
        self.size = int(image_size)
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.features: Tensor | None = None
        head = self.model.get_classifier() if hasattr(self.model, "get_classifier") else self.model.head
        head.register_forward_hook(self._keep_input)

    def _keep_input(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        self.features = inputs[0].detach().flatten(1).float()

    @torch.no_grad()
    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Images (B, 3, H, W) in [-1, 1] -> predicted classes (B,) and penultimate features (B, D)."""
        x = images.float()
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        logits = self.model(((x * 0.5 + 0.5) - self.mean) / self.std)
        return logits.argmax(dim=-1), self.features


class PairJudge:
    """Colour and shape judged apart, by a classifier of each (``color``: 6 colours, ``shape``: 6 shapes): the
    colour-shape class is ``colour * 6 + shape``, as :class:`Judge` gives it. A 36-way judge trained on the shapes
    train split has never seen the held-out pairs and so never predicts them (its accuracy on real held-out images is
    0); each colour and each shape occurs in training, so this one judges a held-out pair as it judges any other."""

    def __init__(self, color: Judge, shape: Judge) -> None:
        self.color, self.shape = color, shape

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Images (B, 3, H, W) in [-1, 1] -> colour-shape classes (B,) and both judges' features side by side."""
        color, color_features = self.color(images)
        shape, shape_features = self.shape(images)
        return color * 6 + shape, torch.cat([color_features, shape_features], dim=1)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (N, D) and b (M, D)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():  # near-singular: regularise, as the FID reference code does
        eps = np.eye(a.shape[1]) * 1e-6
        covmean = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


class InceptionFeatures:
    """torchvision Inception-v3 pool features (2048-d) from a local state-dict file (no download)."""

    def __init__(self, path: str | Path, *, device: torch.device | str = "cpu") -> None:
        from torchvision.models import inception_v3

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--inception {path}: no such file (a torchvision inception_v3 state dict)")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        model = inception_v3(weights=None, aux_logits=True, init_weights=False)
        model.load_state_dict(state)
        model.fc = nn.Identity()
        self.model = model.eval().to(device)
        self.mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        x = F.interpolate(images.float(), size=(299, 299), mode="bilinear", align_corners=False)
        return self.model(((x * 0.5 + 0.5) - self.mean) / self.std).float()


def _real_images(card_name: str, n: int, size: int) -> tuple[Tensor, list[str], Tensor]:
    """The first n test images of the card in [-1, 1], their captions and colour-shape labels."""
    card = load_card(card_name)
    ensure_dataset(card)
    decoder = SampleDecoder(
        image_size=size,
        image_key=card.image_key,
        label_key="color_shape",
        text_key=card.text_key,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )
    images, texts, labels = [], [], []
    for batch in eval_stream(card, "test", decoder=decoder, batch_size=min(n, 500)):
        if batch["size"]:
            images.append(batch["image"])
            texts.extend(batch["text"])
            labels.append(batch["label"])
        if len(texts) >= n:
            break
    return torch.cat(images)[:n], texts[:n], torch.cat(labels)[:n]


@torch.no_grad()
def evaluate_generation(
    pipe: Any,
    judge: Judge | PairJudge,
    *,
    n: int = 8,
    steps: int = 25,
    prior_guidance: float = 4.0,
    decoder_guidance: float = 3.0,
    seed: int = 0,
    ablation: bool = True,
    inception: InceptionFeatures | None = None,
    grid_dir: Path | None = None,
    grid_prefix: str = "",
    batch_prompts: int = 6,
    dataset: str = "shapes",
    real_images: int = 1000,
) -> dict[str, Any]:
    """The metrics of the module docstring, as a dict; with ``grid_dir``, a grid per condition and split there
    (``{grid_prefix}prior-seen.png``: one row per prompt)."""
    seen, held = prompt_set(dataset)
    conditions = {"prior": "prior"} | ({"text_embedding": "text"} if ablation else {})
    results: dict[str, Any] = {"n_per_prompt": n, "steps": steps, "prior_guidance": prior_guidance,
                               "decoder_guidance": decoder_guidance, "seed": seed}  # fmt: skip
    samples: dict[tuple[str, str], tuple[Tensor, Tensor]] = {}  # (condition, split) -> judge features, images
    for cond, source in conditions.items():
        started = time.perf_counter()
        results[cond] = {}
        for split, prompts in (("seen", seen), ("heldout", held)):
            results[cond][split], samples[cond, split] = _generate_and_judge(
                pipe, judge, prompts, from_prior=source == "prior", n=n, steps=steps, prior_guidance=prior_guidance,
                decoder_guidance=decoder_guidance, seed=seed, batch_prompts=batch_prompts,
            )  # fmt: skip
            if grid_dir is not None:
                grid = make_grid(to_pil_images(samples[cond, split][1]), columns=n)
                atomic_save_image(grid, grid_dir / f"{grid_prefix}{cond}-{split}.png")
        results[cond]["seconds"] = round(time.perf_counter() - started, 1)
    size = next(iter(samples.values()))[1].shape[-1]
    results["real"], real_feats, real_inc = _judge_real_images(pipe, judge, dataset, real_images, size, inception)
    for (cond, split), (feats, images) in samples.items():
        entry = results[cond][split]
        entry["fd_judge_features"] = frechet_distance(feats.numpy(), real_feats)
        if inception is not None:
            entry["fid_inception"] = frechet_distance(
                inception(images.to(pipe._execution_device)).cpu().numpy(), real_inc
            )
    return results


SEED_METRICS = ("prompt_accuracy", "color_accuracy", "shape_accuracy", "clip_score", "fd_judge_features",
                "fid_inception")  # fmt: skip
SPLITS = ("seen", "heldout")


def mean_over_seeds(per_seed: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The results of :func:`evaluate_generation` at two or more sample seeds, as one result of the same layout: each
    metric the mean over the seeds with its sample standard deviation beside it (``prompt_accuracy_std``), image
    counts and seconds summed, the seeds in ``seeds`` and each seed's own figures in ``per_seed``. The real-image
    row is the same at every seed and is kept once."""
    if len(per_seed) < 2:
        raise ValueError(f"mean_over_seeds needs the results of two or more seeds, got {len(per_seed)}")
    seeds = [r["seed"] for r in per_seed]
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"mean_over_seeds got the same seed twice: {seeds}")
    first = per_seed[0]
    conditions = [k for k, v in first.items() if isinstance(v, dict) and k != "real"]
    merged: dict[str, Any] = {k: v for k, v in first.items() if not isinstance(v, dict) and k != "seed"}
    merged["seeds"] = seeds
    for cond in conditions:
        merged[cond] = {"seconds": round(sum(r[cond]["seconds"] for r in per_seed), 1)}
        for split in SPLITS:
            entries = [r[cond][split] for r in per_seed]
            entry: dict[str, Any] = {"n": sum(e["n"] for e in entries)}
            for key in _metrics(entries[0]):
                values = [e[key] for e in entries]
                entry[key], entry[f"{key}_std"] = statistics.mean(values), statistics.stdev(values)
            merged[cond][split] = entry
    merged["real"] = first["real"]
    merged["per_seed"] = [
        {"seed": r["seed"], **{cond: {split: _metrics(r[cond][split]) for split in SPLITS} for cond in conditions}}
        for r in per_seed
    ]
    return merged


def _metrics(entry: dict[str, Any]) -> dict[str, float]:
    """The :data:`SEED_METRICS` a condition-and-split entry of :func:`evaluate_generation` holds."""
    return {key: entry[key] for key in SEED_METRICS if key in entry}


def _generate_and_judge(
    pipe: Any,
    judge: Judge | PairJudge,
    prompts: list[tuple[str, int]],
    *,
    from_prior: bool,
    n: int,
    steps: int,
    prior_guidance: float,
    decoder_guidance: float,
    seed: int,
    batch_prompts: int,
) -> tuple[dict[str, Any], tuple[Tensor, Tensor]]:
    """``n`` images per (prompt, class), decoded from the prior's image embedding (``from_prior``) or from the CLIP
    text embedding itself: their accuracies and CLIP score, and their judge features (N, D) and images (N, 3, H, W)."""
    images, labels, preds, feats, clip_scores = [], [], [], [], []
    for i in range(0, len(prompts), batch_prompts):
        chunk = prompts[i : i + batch_prompts]
        text, enc, pad = pipe.encode_prompt([p for p, _ in chunk])
        text, enc, pad = (x.repeat_interleave(n, dim=0) for x in (text, enc, pad))
        generator = torch.Generator().manual_seed(seed + i)
        embeds = text
        if from_prior:
            embeds = pipe.prior.sample(text, enc, pad, guidance_scale=prior_guidance, num_inference_steps=steps,
                                       sampler=pipe.prior_scheduler, generator=generator)  # fmt: skip
        out = pipe.decode(embeds, enc, pad, decoder_guidance_scale=decoder_guidance,
                          num_inference_steps=steps, generator=generator)  # fmt: skip
        pred, feat = judge(out)
        images.append(out.cpu())
        preds.append(pred.cpu())
        feats.append(feat.cpu())
        labels.append(torch.tensor([c for _, c in chunk]).repeat_interleave(n))
        clip_scores.append((pipe.clip.encode_images(out) * text).sum(-1).cpu())
    label, pred = torch.cat(labels), torch.cat(preds)
    right = pair_accuracies(pred, label)
    metrics = {
        "prompt_accuracy": right.pop("accuracy"),
        **right,
        "clip_score": torch.cat(clip_scores).mean().item(),
        "n": len(label),
    }
    return metrics, (torch.cat(feats), torch.cat(images))


def pair_accuracies(pred: Tensor, label: Tensor) -> dict[str, float]:
    """Shares of colour-shape predictions (class = colour * 6 + shape) right on both, on the colour, on the shape."""
    return {
        "accuracy": (pred == label).float().mean().item(),
        "color_accuracy": (pred // 6 == label // 6).float().mean().item(),
        "shape_accuracy": (pred % 6 == label % 6).float().mean().item(),
    }


def _judge_real_images(
    pipe: Any, judge: Judge | PairJudge, dataset: str, count: int, size: int, inception: InceptionFeatures | None
) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
    """The reference row of ``count`` real test images at ``size`` px (the judge's accuracy on them, the CLIP score
    of their captions), with their judge features (N, D) and Inception features (N, 2048) to measure against."""
    device = pipe._execution_device
    real, captions, real_labels = _real_images(dataset, count, size)
    real_pred, real_feats = judge(real.to(device))
    tokens = ClipTokenizer(context_length=pipe.clip.context_length)(captions)  # dataset captions: cut as in training
    caption_embeds = pipe.clip.encode_text(tokens.to(device))[0]
    row = {
        "n": len(real),
        "judge_accuracy": (real_pred.cpu() == real_labels).float().mean().item(),  # the judge's own ceiling
        "clip_score": (pipe.clip.encode_images(real.to(device)) * caption_embeds).sum(-1).mean().item(),
    }
    real_inc = inception(real.to(device)).cpu().numpy() if inception is not None else None
    return row, real_feats.cpu().numpy(), real_inc
