"""Zero-shot classification with a CLIP model: class names x prompt templates -> one text embedding per class."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.transforms import check_images

__all__ = ["ZeroShotClassifier", "imagenet_classnames", "imagenet_templates", "zeroshot_weights"]


@torch.no_grad()
def zeroshot_weights(
    model: nn.Module,
    tokenizer: Callable[[list[str]], Tensor],
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> Tensor:
    """(D, C) classifier: for each class, the normalised mean of its normalised prompt embeddings (Radford et al.)."""
    if not classnames:
        raise ValueError("zero-shot classification needs at least one class name")
    if not templates or any("{}" not in t for t in templates):
        raise ValueError("every prompt template must contain '{}' where the class name goes, e.g. 'a photo of a {}.'")
    device = device or next(model.parameters()).device
    prompts = [t.format(c) for c in classnames for t in templates]  # class-major: C x T prompts
    feats = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[start : start + batch_size]).to(device)
        feats.append(model.encode_text(tokens, normalize=True).float())
    emb = torch.cat(feats).view(len(classnames), len(templates), -1)  # (C, T, D)
    emb = F.normalize(emb.mean(dim=1), dim=-1)  # (C, D)
    return emb.t().contiguous()  # (D, C)


class ZeroShotClassifier(nn.Module):
    """Images -> logits over class names, from a CLIP model and prompt templates; built once, batched.

    Images are a float batch (B, 3, S, S) as the run's transform makes them (``multimodal.load_model_and_transforms``),
    S the image tower's side; anything else is a ValueError saying what to do.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable[[list[str]], Tensor],
        classnames: Sequence[str],
        templates: Sequence[str],
        *,
        batch_size: int = 256,
    ) -> None:
        super().__init__()
        self.model = model
        self.classnames = list(classnames)
        vision = getattr(getattr(model, "cfg", None), "vision", None)
        self.image_size: int | None = getattr(vision, "img_size", None)  # None: a model that takes any size
        self.register_buffer(
            "weights", zeroshot_weights(model, tokenizer, classnames, templates, batch_size=batch_size)
        )

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C) cosine similarities scaled by 100, as in CLIP's zero-shot evaluation."""
        check_images(images, self.image_size, who="ZeroShotClassifier")
        feats = self.model.encode_image(images, normalize=True).float()  # (B, D)
        return 100.0 * feats @ self.weights


def imagenet_classnames() -> list[str]:
    """open_clip's cleaned ImageNet-1k class names, in WordNet-id order."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def imagenet_templates(kind: str = "openai") -> list[str]:
    """The 80 OpenAI ImageNet prompt templates (``kind="openai"``) or open_clip's simple ones, as '{}' strings."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    table = {"openai": OPENAI_IMAGENET_TEMPLATES, "simple": SIMPLE_IMAGENET_TEMPLATES}
    if kind not in table:
        raise ValueError(f"unknown template set {kind!r}; choose 'openai' (80) or 'simple'")
    return [t("{}") for t in table[kind]]
