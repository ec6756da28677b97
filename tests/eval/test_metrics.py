"""multimodal.evaluation.metrics: top-k and mean per-class recall against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from multimodal.evaluation import classification_metrics


def test_metrics_by_hand():
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    topk = torch.tensor([[0, 1], [1, 0], [0, 2], [1, 0], [0, 1], [2, 1]])  # top-1 hits: 1, 0, 1, 1, 0, 1
    m = classification_metrics(topk, labels, num_classes=3)
    assert m["top1"] == pytest.approx(4 / 6)
    assert m["top2"] == pytest.approx(5 / 6)  # only sample 4 misses in its top-2
    assert m["mean_per_class_recall"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    assert m["num_samples"] == 6 and m["num_classes_present"] == 3


def test_empty_evaluation_is_an_error():
    with pytest.raises(ValueError, match="no samples were evaluated"):
        classification_metrics(torch.zeros(0, 5, dtype=torch.long), torch.zeros(0, dtype=torch.long), 10)
