"""Gradient caching: G chunks give the loss and gradients of one full-batch backward."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import Tensor, nn

from multimodal.losses import ClipLoss, SigLipLoss, cached_contrastive_backward, split_batch
from tests.losses.dist_utils import LOCAL_BATCH, TinyTowers, launch, loss_and_grads, make_batch, rel_err

BATCH = 16


def tiny_task(siglip: bool, dropout: float) -> tuple[TinyTowers, nn.Module, dict[str, Tensor]]:
    model = TinyTowers(siglip=siglip, dropout=dropout)
    images, texts = make_batch(BATCH)
    return model, SigLipLoss() if siglip else ClipLoss(), {"images": images, "texts": texts}


def grads(model: nn.Module) -> dict[str, Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def reference_backward(model: TinyTowers, loss_fn: nn.Module, chunks: list[dict[str, Tensor]]) -> Tensor:
    """Encode the chunks in order with grad (one graph over the whole batch), then one backward."""
    features = [model(chunk["images"], chunk["texts"]) for chunk in chunks]
    images, texts = (torch.cat(parts) for parts in zip(*features, strict=True))  # (N, D) each
    loss = loss_fn(images, texts, *model.loss_args())
    loss.backward()
    return loss.detach()


def cached_backward(model: TinyTowers, loss_fn: nn.Module, chunks: list[dict[str, Tensor]], **kwargs) -> Tensor:
    return cached_contrastive_backward(
        lambda chunk: model(chunk["images"], chunk["texts"]),
        chunks,
        lambda images, texts: loss_fn(images, texts, *model.loss_args()),
        **kwargs,
    )


@pytest.mark.parametrize("siglip", [False, True], ids=["clip", "siglip"])
@pytest.mark.parametrize("groups", [1, 4])
def test_equals_full_batch_backward(siglip: bool, groups: int) -> None:
    model, loss_fn, batch = tiny_task(siglip, dropout=0.0)
    full_loss = reference_backward(model, loss_fn, [batch])
    expected = grads(model)
    model.zero_grad()
    loss = cached_backward(model, loss_fn, split_batch(batch, groups))
    assert not loss.requires_grad
    assert rel_err(loss, full_loss) < 1e-6
    got = grads(model)
    assert {"logit_scale", "image.0.weight", "text.3.weight"} <= set(got)
    for name in expected:
        assert rel_err(got[name], expected[name]) < 1e-5, name


@pytest.mark.parametrize("siglip", [False, True], ids=["clip", "siglip"])
def test_dropout_replays_exactly(siglip: bool) -> None:
    model, loss_fn, batch = tiny_task(siglip, dropout=0.3)
    chunks = split_batch(batch, 4)
    torch.manual_seed(123)
    full_loss = reference_backward(model, loss_fn, chunks)
    expected, rng_after = grads(model), torch.get_rng_state()
    model.zero_grad()
    torch.manual_seed(123)
    loss = cached_backward(model, loss_fn, chunks)
    assert rel_err(loss, full_loss) < 1e-6
    for name, grad in grads(model).items():
        assert rel_err(grad, expected[name]) < 1e-5, name
    assert torch.equal(torch.get_rng_state(), rng_after)  # the RNG ends where one pass would leave it
    with torch.no_grad():
        eval_loss = loss_fn(*model.eval()(batch["images"], batch["texts"]), *model.loss_args())
    assert abs(eval_loss.item() - loss.item()) > 1e-3  # dropout really changed the features


def test_no_sync_wraps_all_but_last_chunk() -> None:
    model, loss_fn, batch = tiny_task(False, dropout=0.0)
    entered: list[int] = []

    @contextmanager
    def no_sync() -> Iterator[None]:
        entered.append(len(entered))
        yield

    cached_backward(model, loss_fn, split_batch(batch, 4), no_sync=no_sync)
    assert entered == [0, 1, 2]


def test_ddp_two_processes_with_no_sync_equals_one_process(tmp_path) -> None:
    """2 ranks x 2 chunks under real DDP (all-reduce once, on the last chunk) = one process on all 4 chunks."""
    world_size = 2
    got = launch("grad_cache_ddp", world_size, tmp_path)
    reference = loss_and_grads(TinyTowers(), ClipLoss(), *make_batch(world_size * 2 * LOCAL_BATCH))
    for rank_results in got:
        assert set(rank_results) == set(reference)
        for name in reference:
            assert rel_err(rank_results[name], reference[name]) < 1e-5, name


def test_split_batch() -> None:
    images = torch.arange(12).reshape(6, 2)
    captions = [f"caption {i}" for i in range(6)]
    chunks = split_batch({"images": images, "captions": captions}, 3)
    assert len(chunks) == 3
    assert torch.equal(torch.cat([c["images"] for c in chunks]), images)
    assert [c["captions"] for c in chunks] == [captions[0:2], captions[2:4], captions[4:6]]
    with pytest.raises(ValueError, match="not divisible"):
        split_batch({"images": images}, 4)
    with pytest.raises(ValueError, match="same leading size"):
        split_batch({"images": images, "captions": captions[:5]}, 1)
    with pytest.raises(ValueError, match=">= 1"):
        split_batch({"images": images}, 0)
    with pytest.raises(ValueError, match="leading batch dimension"):
        split_batch({"images": images, "step": 3}, 2)


def test_rejects_empty_chunks_and_bad_encode() -> None:
    with pytest.raises(ValueError, match="at least one chunk"):
        cached_contrastive_backward(lambda c: c, [], lambda a, b: a.sum())
    with pytest.raises(ValueError, match="same B"):
        cached_contrastive_backward(lambda c: (torch.ones(2, 3), torch.ones(3, 3)), [0], lambda a, b: a.sum())
    with pytest.raises(ValueError, match="depend on both"):
        cached_contrastive_backward(lambda c: (torch.ones(2, 3), torch.ones(2, 3)), [0], lambda a, b: a.sum())
