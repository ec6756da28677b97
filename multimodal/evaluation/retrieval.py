"""Image-text retrieval with a CLIP model: recall@1/5/10 both ways over images and their captions (one or several
an image, as COCO's five).

Two definitions, side by side:

- ``image_to_text_R@k`` and ``text_to_image_R@k``, this project's: a retrieved caption counts as correct when its text
  equals one of the query image's captions (and a retrieved image when one of its captions equals the query text),
  so identical captions of different images, common in templated data, are not scored as misses;
- ``text_retrieval_recall@k`` (image to text) and ``image_retrieval_recall@k`` (text to image), CLIP_benchmark's
  (``clip_benchmark.metrics.zeroshot_retrieval``, under its names): only an image's own captions count. Per image,
  one of its own captions among the k texts of highest score; per caption, its own image among the k images of
  highest score. Where captions repeat, their scores tie and ``torch.topk`` picks among them, as in CLIP_benchmark.

With distinct captions the two agree.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from torch import Tensor, nn
from tqdm.auto import tqdm

from .metrics import gather_rows

__all__ = ["clip_benchmark_recalls", "recall_at_k", "retrieval_evaluate"]


def recall_at_k(sim: Tensor, positives: Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[int, float]:
    """Share of queries (rows of ``sim``) with a positive among their top-k; ``positives`` is (Q, K) bool."""
    if not positives.any(dim=1).all():
        raise ValueError("every query needs at least one positive")
    ranked = sim.argsort(dim=1, descending=True)  # (Q, K)
    hits = positives.gather(1, ranked)  # (Q, K) in rank order
    return {k: hits[:, : min(k, sim.shape[1])].any(dim=1).float().mean().item() for k in ks}


def clip_benchmark_recalls(
    texts: Tensor, images: Tensor, text_image: Tensor, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """CLIP_benchmark's ``image_retrieval_recall@k`` and ``text_retrieval_recall@k`` of normalised embeddings
    ``texts`` (T, D) and ``images`` (N, D), caption t being one of image ``text_image[t]``'s, computed as it does."""
    scores = texts @ images.t()  # (T, N)
    own = torch.zeros_like(scores, dtype=torch.bool)
    own[torch.arange(len(scores)), text_image] = True
    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = _own_in_topk(scores, own, k)
        out[f"text_retrieval_recall@{k}"] = _own_in_topk(scores.T, own.T, k)
    return out


def _own_in_topk(scores: Tensor, own: Tensor, k: int) -> float:
    """Share of rows with an ``own`` column among the k of highest score (``torch.topk``'s pick among ties)."""
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices  # (Q, k)
    return own.gather(1, top).any(dim=1).float().mean().item()


@torch.no_grad()
def retrieval_evaluate(
    model: nn.Module, tokenizer, batches, *, acc: Accelerator | None = None, progress: bool = False
) -> dict[str, float]:
    """Both definitions' recall@1/5/10 both ways over all ranks' images and captions. A batch's ``"text"`` holds a
    caption per image, or a list of its captions."""
    was_training = model.training
    model.eval()
    device = acc.device if acc is not None else next(model.parameters()).device
    img, txt, captions = [], [], []  # captions: one list per image
    for batch in tqdm(batches, desc="retrieval", disable=not progress, leave=False):
        if not batch["size"]:
            continue
        per_image = [[text] if isinstance(text, str) else list(text) for text in batch["text"]]
        tokens = tokenizer([c for caps in per_image for c in caps]).to(device)
        img.append(model.encode_image(batch["image"].to(device), normalize=True).float().cpu())
        txt.append(model.encode_text(tokens, normalize=True).float().cpu())
        captions += per_image
    model.train(was_training)
    dim = model.cfg.embed_dim
    images = gather_rows(acc, torch.cat(img) if img else torch.zeros(0, dim))
    texts = gather_rows(acc, torch.cat(txt) if txt else torch.zeros(0, dim))
    if acc is not None and acc.num_processes > 1:
        from accelerate.utils import gather_object

        captions = gather_object(captions)
    if not captions:
        raise ValueError("no (image, caption) pairs were evaluated")
    flat = [c for caps in captions for c in caps]
    text_image = torch.tensor([i for i, caps in enumerate(captions) for _ in caps])  # (T,) each caption's image
    ids = {c: i for i, c in enumerate(dict.fromkeys(flat))}
    caption_id = torch.tensor([ids[c] for c in flat])
    has = torch.zeros(len(captions), len(ids), dtype=torch.bool)  # (N, distinct captions)
    has[text_image, caption_id] = True
    positives = has[:, caption_id]  # (N, T): caption t's text is one of image i's captions
    sim = images @ texts.t()  # (N images, T texts)
    out = {"num_pairs": len(flat), "num_images": len(captions), "distinct_captions": len(ids)}
    out.update({f"image_to_text_R@{k}": v for k, v in recall_at_k(sim, positives).items()})
    out.update({f"text_to_image_R@{k}": v for k, v in recall_at_k(sim.t(), positives.t()).items()})
    out.update(clip_benchmark_recalls(texts, images, text_image))
    return out
