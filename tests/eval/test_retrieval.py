"""multimodal.evaluation.retrieval: recall@k by hand, with duplicate captions counted as positives."""

from __future__ import annotations

import pytest
import torch

from multimodal.evaluation import recall_at_k


def test_recall_at_k_by_hand():
    sim = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.7, 0.6, 0.1]])
    positives = torch.eye(3, dtype=torch.bool)
    r = recall_at_k(sim, positives, ks=(1, 2, 5))
    # query 0: own item ranked 1st; query 1: 2nd; query 2: 3rd
    assert r == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 5: 1.0}
    positives[2, 1] = True  # item 1 has the same caption as item 2
    assert recall_at_k(sim, positives, ks=(2,))[2] == 1.0
    with pytest.raises(ValueError, match="at least one positive"):
        recall_at_k(sim, torch.zeros(3, 3, dtype=torch.bool))
