"""multimodal.pipelines.zeroshot: the classifier equals the normalise-average-renormalise recipe by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from multimodal.pipelines.zeroshot import ZeroShotClassifier, imagenet_classnames, imagenet_templates, zeroshot_weights


class BagOfTokens(nn.Module):
    """A linear 'CLIP' for testing the pipeline math: text = mean of token embeddings, image = linear map."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(256, 8)
        self.img = nn.Linear(12, 8)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.emb(tokens).mean(dim=1)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.img(images.flatten(1))
        return F.normalize(x, dim=-1) if normalize else x


def byte_tokenizer(texts: list[str]) -> torch.Tensor:
    out = torch.zeros(len(texts), 32, dtype=torch.long)
    for i, t in enumerate(texts):
        b = list(t.encode())[:32]
        out[i, : len(b)] = torch.tensor(b)
    return out


def test_weights_by_hand():
    model = BagOfTokens()
    classes, templates = ["cat", "dog", "red fox"], ["a {}.", "a photo of the {}!"]
    w = zeroshot_weights(model, byte_tokenizer, classes, templates, batch_size=4)  # batches split classes
    assert w.shape == (8, 3)
    for c, name in enumerate(classes):
        e = F.normalize(model.encode_text(byte_tokenizer([t.format(name) for t in templates])), dim=-1)
        ref = F.normalize(e.mean(0), dim=-1)
        torch.testing.assert_close(w[:, c], ref, atol=1e-6, rtol=0)
    clf = ZeroShotClassifier(model, byte_tokenizer, classes, templates)
    images = torch.randn(5, 3, 2, 2)
    expected = 100 * F.normalize(model.encode_image(images), dim=-1) @ w
    torch.testing.assert_close(clf(images), expected)


def test_bad_templates_and_imagenet_metadata():
    with pytest.raises(ValueError, match=r"must contain '\{\}'"):
        zeroshot_weights(BagOfTokens(), byte_tokenizer, ["cat"], ["a photo"])
    with pytest.raises(ValueError, match="at least one class"):
        zeroshot_weights(BagOfTokens(), byte_tokenizer, [], ["a {}"])
    assert len(imagenet_classnames()) == 1000 and imagenet_classnames()[0] == "tench"
    templates = imagenet_templates()
    assert len(templates) == 80 and templates[0] == "a bad photo of a {}."
