"""multimodal.pipelines.zeroshot: the classifier equals the normalise-average-renormalise recipe by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from multimodal import create_model, get_tokenizer
from multimodal.data import ImageTransform
from multimodal.pipelines.zeroshot import ZeroShotClassifier, imagenet_classnames, imagenet_templates, zeroshot_weights
from tests.conftest import TINY_CLIP


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


@pytest.fixture(scope="module")
def tiny_clip_classifier() -> ZeroShotClassifier:
    torch.manual_seed(0)
    model = create_model(TINY_CLIP["name"], **TINY_CLIP["args"]).eval()
    return ZeroShotClassifier(model, get_tokenizer(model), ["red circle", "blue square", "green star"], ["a {}"])


FIX = "pass images through the transform from multimodal.load_model_and_transforms and stack them"


@pytest.mark.parametrize(
    ("images", "got", "fix"),
    [
        (
            torch.zeros(2, 3, 32, 32, dtype=torch.uint8),
            "a torch.uint8 tensor of shape (2, 3, 32, 32) (raw pixels?)",
            FIX,
        ),
        (torch.zeros(3, 32, 32), "one image of shape (3, 32, 32)", "add a batch dimension: image.unsqueeze(0)"),
        (torch.zeros(1, 32, 32, 3), "a tensor of shape (1, 32, 32, 3)", FIX),
        (torch.zeros(1, 1, 32, 32), "a tensor of shape (1, 1, 32, 32)", FIX),
        (torch.zeros(32, 32), "a tensor of shape (32, 32)", FIX),
        (torch.zeros(1, 3, 64, 48), "64x48 images, shape (1, 3, 64, 48)", FIX),
        (np.zeros((1, 3, 32, 32), dtype=np.float32), "a ndarray", FIX),
    ],
)
def test_classifier_input_errors_say_what_was_given_and_what_to_do(tiny_clip_classifier, images, got, fix):
    with pytest.raises(ValueError) as e:
        tiny_clip_classifier(images)
    assert str(e.value) == f"ZeroShotClassifier takes a float batch of shape (B, 3, 32, 32), got {got}; {fix}"


def test_classifier_takes_the_transforms_output(tiny_clip_classifier):
    preprocess = ImageTransform(image_size=32)
    images = torch.stack([preprocess(Image.new(mode, (40, 30), "red")) for mode in ("RGB", "L", "RGBA")])
    logits = tiny_clip_classifier(images)  # (3, 3 classes)
    assert logits.shape == (3, 3) and torch.isfinite(logits).all()
