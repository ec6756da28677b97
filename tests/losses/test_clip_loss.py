"""ClipLoss: equal to a naive reference and to open_clip, and exact across two gloo processes."""

from __future__ import annotations

import open_clip.loss
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from multimodal.losses import ClipLoss
from tests.losses.dist_utils import CLIP_MODES, LOCAL_BATCH, TinyTowers, launch, loss_and_grads, make_batch, rel_err


def features(batch: int, dim: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(batch, dim, generator=generator), dim=-1).requires_grad_()
    texts = F.normalize(torch.randn(batch, dim, generator=generator), dim=-1).requires_grad_()
    return images, texts, torch.tensor(1 / 0.07, requires_grad=True)


def naive_clip_loss(images: Tensor, texts: Tensor, scale: Tensor) -> Tensor:
    """Row by row: -log softmax of the matching pair, averaged over both directions."""
    logits = scale * images @ texts.T
    i2t = torch.stack([-logits[i].log_softmax(0)[i] for i in range(len(logits))]).mean()
    t2i = torch.stack([-logits[:, i].log_softmax(0)[i] for i in range(len(logits))]).mean()
    return (i2t + t2i) / 2


def grads(loss: Tensor, *inputs: Tensor) -> tuple[Tensor, ...]:
    return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize(("batch", "dim"), [(1, 4), (8, 16), (33, 7)])
def test_matches_naive_reference_and_open_clip(batch: int, dim: int) -> None:
    inputs = features(batch, dim)
    ours = ClipLoss()(*inputs)
    naive = naive_clip_loss(*inputs)
    reference = open_clip.loss.ClipLoss()(*inputs)
    assert abs(ours.item() - naive.item()) < 1e-5
    assert abs(ours.item() - reference.item()) < 1e-6
    for mine, theirs in zip(grads(ours, *inputs), grads(reference, *inputs), strict=True):
        assert torch.allclose(mine, theirs, atol=1e-6)
    for mine, theirs in zip(grads(ClipLoss()(*inputs), *inputs), grads(naive, *inputs), strict=True):
        assert torch.allclose(mine, theirs, atol=1e-5)


def test_labels_cache_follows_batch_size_and_output_dict() -> None:
    loss_fn = ClipLoss(cache_labels=True)
    for batch in (8, 5, 8):
        inputs = features(batch, 6, seed=batch)
        out = loss_fn(*inputs, output_dict=True)
        assert set(out) == {"contrastive_loss"}
        assert abs(out["contrastive_loss"].item() - naive_clip_loss(*inputs).item()) < 1e-5


def test_orthonormal_pairs_give_closed_form_loss() -> None:
    """Logits are scale on the diagonal and 0 elsewhere, so each row's loss is log(1 + (B - 1) e^-scale)."""
    images = torch.eye(6)
    for scale in (1.0, 3.0):
        expected = torch.log1p(torch.tensor(5 * torch.e**-scale))
        assert abs(ClipLoss()(images, images, torch.tensor(scale)).item() - expected.item()) < 1e-6


@pytest.mark.parametrize(
    ("images", "texts", "scale"),
    [
        (torch.randn(4, 8), torch.randn(5, 8), torch.tensor(1.0)),
        (torch.randn(4, 8), torch.randn(4, 6), torch.tensor(1.0)),
        (torch.randn(4), torch.randn(4), torch.tensor(1.0)),
        (torch.randn(4, 8), torch.randn(4, 8), torch.ones(2)),
    ],
)
def test_rejects_bad_inputs(images: Tensor, texts: Tensor, scale: Tensor) -> None:
    with pytest.raises(ValueError, match="must"):
        ClipLoss()(images, texts, scale)


def test_rejects_bad_rank_and_uninitialised_world() -> None:
    with pytest.raises(ValueError, match="rank"):
        ClipLoss(rank=2, world_size=2)
    with pytest.raises(ValueError, match="not initialised"):
        ClipLoss(world_size=2)(*features(4, 8))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], dict[str, Tensor], int]:
    """Per-rank results of every CLIP mode on 2 processes, and the single-process reference on the full batch."""
    world_size = 2
    results = launch("clip", world_size, tmp_path_factory.mktemp("clip"))
    reference = loss_and_grads(TinyTowers(), ClipLoss(), *make_batch(world_size * LOCAL_BATCH))
    return results, reference, world_size


@pytest.mark.parametrize("mode", ["local+grad", "global+grad"])
def test_two_process_gather_with_grad_is_exact(two_ranks: tuple, mode: str) -> None:
    results, reference, _ = two_ranks
    for rank_results in results:
        got = rank_results[mode]
        assert set(got) == set(reference)
        for name in reference:
            assert rel_err(got[name], reference[name]) < 1e-5, (mode, name)


def detached_gather_reference(world_size: int, *, local_loss: bool) -> dict[str, Tensor]:
    """What gather_with_grad=False computes, on one process: rank r's loss sees the other ranks' features as
    constants (and, when local_loss, its own only in its rows); gradients are then averaged as DDP does."""
    model = TinyTowers()
    images, texts = model(*make_batch(world_size * LOCAL_BATCH))  # (N, D) each
    scale = model.logit_scale.exp()
    losses = []
    for rank in range(world_size):
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        all_images, all_texts = images.detach().clone(), texts.detach().clone()
        if local_loss:
            labels = torch.arange(LOCAL_BATCH) + rank * LOCAL_BATCH
            per_image, per_text = scale * images[rows] @ all_texts.T, scale * texts[rows] @ all_images.T
        else:
            all_images[rows], all_texts[rows] = images[rows], texts[rows]
            labels = torch.arange(world_size * LOCAL_BATCH)
            per_image = scale * all_images @ all_texts.T
            per_text = per_image.T
        losses.append((F.cross_entropy(per_image, labels) + F.cross_entropy(per_text, labels)) / 2)
    loss = torch.stack(losses).mean()
    loss.backward()
    return {"loss": loss.detach(), **{name: p.grad for name, p in model.named_parameters()}}


def test_two_process_open_clip_default_is_not_exact(two_ranks: tuple) -> None:
    """local_loss=False, gather_with_grad=False: every rank has the full loss, but only its own features get
    gradient, so after DDP's mean the encoder gradients are 1/world of the exact ones (logit_scale's is exact)."""
    results, reference, world_size = two_ranks
    got = results[0]["global+nograd"]
    assert rel_err(got["loss"], reference["loss"]) < 1e-6
    assert rel_err(got["logit_scale"], reference["logit_scale"]) < 1e-5
    for name in reference:
        if name.startswith(("image.", "text.")):
            assert rel_err(got[name], reference[name]) > 0.4
            assert rel_err(world_size * got[name], reference[name]) < 1e-5
    emulated = detached_gather_reference(world_size, local_loss=False)
    assert all(rel_err(got[name], emulated[name]) < 1e-5 for name in emulated)


def test_two_process_local_loss_without_grad_gather_is_not_exact(two_ranks: tuple) -> None:
    """local_loss=True, gather_with_grad=False: the loss is right but gradients through other ranks' rows are lost."""
    results, reference, world_size = two_ranks
    got = results[0]["local+nograd"]
    assert rel_err(got["loss"], reference["loss"]) < 1e-6
    assert all(rel_err(got[name], reference[name]) > 0.05 for name in reference if name.startswith("image."))
    emulated = detached_gather_reference(world_size, local_loss=True)
    assert all(rel_err(got[name], emulated[name]) < 1e-5 for name in emulated)


def test_modes_cover_open_clip_flags() -> None:
    assert {(m["local_loss"], m["gather_with_grad"]) for m in CLIP_MODES.values()} == {
        (a, b) for a in (True, False) for b in (True, False)
    }
