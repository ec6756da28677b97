"""Image-text retrieval with a CLIP model: image-to-text and text-to-image recall@1/5/10 over (image, caption) pairs.

A retrieved caption counts as correct when its text equals the query image's own caption (and likewise for images), so
identical captions of different images, common in templated data, are not scored as misses.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from torch import Tensor, nn
from tqdm.auto import tqdm

from .metrics import gather_rows

__all__ = ["recall_at_k", "retrieval_evaluate"]


def recall_at_k(sim: Tensor, positives: Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[int, float]:
    """Share of queries (rows of ``sim``) with a positive among their top-k; ``positives`` is (Q, K) bool."""
    if not positives.any(dim=1).all():
        raise ValueError("every query needs at least one positive")
    ranked = sim.argsort(dim=1, descending=True)  # (Q, K)
    hits = positives.gather(1, ranked)  # (Q, K) in rank order
    return {k: hits[:, : min(k, sim.shape[1])].any(dim=1).float().mean().item() for k in ks}


@torch.no_grad()
def retrieval_evaluate(
    model: nn.Module, tokenizer, batches, *, acc: Accelerator | None = None, progress: bool = False
) -> dict[str, float]:
    """Recall@1/5/10 both ways over all ranks' (image, caption) pairs."""
    was_training = model.training
    model.eval()
    device = acc.device if acc is not None else next(model.parameters()).device
    img, txt, captions = [], [], []
    for batch in tqdm(batches, desc="retrieval", disable=not progress, leave=False):
        if not batch["size"]:
            continue
        img.append(model.encode_image(batch["image"].to(device), normalize=True).float().cpu())
        txt.append(model.encode_text(tokenizer(batch["text"]).to(device), normalize=True).float().cpu())
        captions += batch["text"]
    model.train(was_training)
    dim = model.cfg.embed_dim
    img_all = gather_rows(acc, torch.cat(img) if img else torch.zeros(0, dim))
    txt_all = gather_rows(acc, torch.cat(txt) if txt else torch.zeros(0, dim))
    if acc is not None and acc.num_processes > 1:
        from accelerate.utils import gather_object

        captions = gather_object(captions)
    if not captions:
        raise ValueError("no (image, caption) pairs were evaluated")
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    caption_id = torch.tensor([ids[c] for c in captions])
    same = caption_id[:, None] == caption_id[None, :]  # (N, N) pairs sharing a caption text
    sim = img_all @ txt_all.t()  # (N images, N texts)
    out = {"num_pairs": len(captions), "distinct_captions": len(ids)}
    out.update({f"image_to_text_R@{k}": v for k, v in recall_at_k(sim, same).items()})
    out.update({f"text_to_image_R@{k}": v for k, v in recall_at_k(sim.t(), same).items()})
    return out
