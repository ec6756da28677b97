"""SigLipLoss: equal to a naive reference and to open_clip, and exact across 2 and 4 gloo processes."""

from __future__ import annotations

import math

import open_clip.loss
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from multimodal.losses import SIGLIP_INIT_LOGIT_BIAS, SIGLIP_INIT_LOGIT_SCALE, SigLipLoss
from tests.losses.dist_utils import LOCAL_BATCH, SIGLIP_MODES, TinyTowers, launch, loss_and_grads, make_batch, rel_err


def features(batch: int, dim: int, seed: int = 0) -> tuple[Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(batch, dim, generator=generator), dim=-1).requires_grad_()
    texts = F.normalize(torch.randn(batch, dim, generator=generator), dim=-1).requires_grad_()
    scale = torch.tensor(math.exp(SIGLIP_INIT_LOGIT_SCALE) + 0.5, requires_grad=True)
    bias = torch.tensor(SIGLIP_INIT_LOGIT_BIAS + 3.0, requires_grad=True)
    return images, texts, scale, bias


def naive_siglip_loss(images: Tensor, texts: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
    """Pair by pair: -log sigmoid(+logit) for matching pairs, -log sigmoid(-logit) for the rest, over B."""
    terms = []
    for i in range(len(images)):
        for j in range(len(texts)):
            logit = scale * images[i].dot(texts[j]) + bias
            terms.append(-F.logsigmoid(logit if i == j else -logit))
    return torch.stack(terms).sum() / len(images)


def test_init_constants() -> None:
    assert math.exp(SIGLIP_INIT_LOGIT_SCALE) == pytest.approx(10.0, rel=1e-12)
    assert SIGLIP_INIT_LOGIT_BIAS == -10.0


@pytest.mark.parametrize(("batch", "dim"), [(1, 4), (8, 16), (17, 5)])
def test_matches_naive_reference_and_open_clip(batch: int, dim: int) -> None:
    inputs = features(batch, dim)
    ours = SigLipLoss()(*inputs)
    naive = naive_siglip_loss(*inputs)
    reference = open_clip.loss.SigLipLoss()(*inputs)
    assert abs(ours.item() - reference.item()) < 1e-6 * max(1.0, reference.item())
    assert abs(ours.item() - naive.item()) < 1e-5 * max(1.0, naive.item())
    ours_grads = torch.autograd.grad(ours, inputs)
    for check in (reference, naive):
        for mine, theirs in zip(ours_grads, torch.autograd.grad(check, inputs), strict=True):
            assert torch.allclose(mine, theirs, rtol=1e-5, atol=1e-6)


def test_output_dict() -> None:
    inputs = features(6, 8)
    out = SigLipLoss()(*inputs, output_dict=True)
    assert set(out) == {"contrastive_loss"}
    assert out["contrastive_loss"].item() == pytest.approx(naive_siglip_loss(*inputs).item(), rel=1e-5)


@pytest.mark.parametrize(
    ("images", "texts", "bias"),
    [
        (torch.randn(4, 8), torch.randn(3, 8), torch.tensor(0.0)),
        (torch.randn(4, 8), torch.randn(4, 9), torch.tensor(0.0)),
        (torch.randn(4, 8), torch.randn(4, 8), torch.zeros(4)),
    ],
)
def test_rejects_bad_inputs(images: Tensor, texts: Tensor, bias: Tensor) -> None:
    with pytest.raises(ValueError, match="must"):
        SigLipLoss()(images, texts, torch.tensor(10.0), bias)


@pytest.fixture(scope="module", params=[2, 4])
def ranks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], dict]:
    """Per-rank results of both exchange modes on 2 and 4 processes, and one process on the full batch."""
    world_size = request.param
    results = launch("siglip", world_size, tmp_path_factory.mktemp(f"siglip{world_size}"))
    reference = loss_and_grads(TinyTowers(siglip=True), SigLipLoss(), *make_batch(world_size * LOCAL_BATCH))
    return results, reference


@pytest.mark.parametrize("mode", SIGLIP_MODES)
def test_multi_process_loss_and_grads_are_exact(ranks: tuple, mode: str) -> None:
    results, reference = ranks
    assert {"logit_scale", "logit_bias", "image.0.weight", "text.3.bias"} <= set(reference)
    for rank_results in results:
        got = rank_results[mode]
        assert set(got) == set(reference)
        for name in reference:
            assert rel_err(got[name], reference[name]) < 1e-5, (mode, name)
