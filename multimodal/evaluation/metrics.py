"""Classification metrics and gathering per-sample results across processes."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from torch import Tensor

__all__ = ["classification_metrics", "gather_rows"]


def classification_metrics(topk_pred: Tensor, labels: Tensor, num_classes: int) -> dict[str, float]:
    """Top-1, top-5 and mean per-class recall from predictions ranked best first, (N, k), and labels (N,)."""
    if topk_pred.shape[0] != labels.shape[0]:
        raise ValueError(f"{topk_pred.shape[0]} predictions for {labels.shape[0]} labels")
    n = labels.shape[0]
    if n == 0:
        raise ValueError("no samples were evaluated: the evaluation split is empty or every sample was skipped")
    hits = topk_pred == labels[:, None]  # (N, k)
    k5 = min(5, num_classes, topk_pred.shape[1])
    top1 = hits[:, 0].float()
    present = labels.unique()
    recalls = torch.stack([top1[labels == c].mean() for c in present])
    return {
        "top1": top1.mean().item(),
        f"top{k5}": hits[:, :k5].any(dim=1).float().mean().item(),
        "mean_per_class_recall": recalls.mean().item(),
        "num_samples": n,
        "num_classes_present": len(present),
    }


def gather_rows(acc: Accelerator | None, x: Tensor) -> Tensor:
    """Concatenate each process's rows (dim 0, any count) on every process, in rank order."""
    if acc is None or acc.num_processes == 1:
        return x
    device = acc.device
    x = x.to(device)
    count = torch.tensor([x.shape[0]], device=device)
    counts = acc.gather(count).tolist()
    padded = acc.pad_across_processes(x, dim=0)
    gathered = acc.gather(padded)
    width = padded.shape[0]
    parts = [gathered[i * width : i * width + c] for i, c in enumerate(counts)]
    return torch.cat(parts).cpu()
