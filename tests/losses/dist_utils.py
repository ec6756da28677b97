"""Helpers for the loss tests: a tiny two-tower model, gloo workers that mimic DDP, and a launcher with a timeout."""

from __future__ import annotations

import gc
import math
import os
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from multimodal.losses import (
    SIGLIP_INIT_LOGIT_BIAS,
    SIGLIP_INIT_LOGIT_SCALE,
    ClipLoss,
    SigLipLoss,
    cached_contrastive_backward,
    split_batch,
)

IMAGE_DIM, TEXT_DIM, EMBED_DIM, LOCAL_BATCH = 12, 10, 8, 4
CLIP_MODES = {
    "local+grad": {"local_loss": True, "gather_with_grad": True},
    "global+grad": {"local_loss": False, "gather_with_grad": True},
    "local+nograd": {"local_loss": True, "gather_with_grad": False},
    "global+nograd": {"local_loss": False, "gather_with_grad": False},
}
SIGLIP_MODES = {"bidir": {"bidir": True}, "shift": {"bidir": False}}


class TinyTowers(nn.Module):
    """Two MLP encoders with normalised outputs, a learnable log scale and (for SigLIP) a bias."""

    def __init__(self, *, siglip: bool = False, dropout: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.image = nn.Sequential(nn.Linear(IMAGE_DIM, 16), nn.GELU(), nn.Dropout(dropout), nn.Linear(16, EMBED_DIM))
        self.text = nn.Sequential(nn.Linear(TEXT_DIM, 16), nn.GELU(), nn.Dropout(dropout), nn.Linear(16, EMBED_DIM))
        scale = SIGLIP_INIT_LOGIT_SCALE if siglip else math.log(1 / 0.07)
        self.logit_scale = nn.Parameter(torch.tensor(scale))
        self.logit_bias = nn.Parameter(torch.tensor(SIGLIP_INIT_LOGIT_BIAS)) if siglip else None

    def forward(self, images: Tensor, texts: Tensor) -> tuple[Tensor, Tensor]:
        """(B, IMAGE_DIM), (B, TEXT_DIM) -> two (B, EMBED_DIM) unit vectors."""
        return F.normalize(self.image(images), dim=-1), F.normalize(self.text(texts), dim=-1)

    def loss_args(self) -> tuple[Tensor, ...]:
        """(scale,) for CLIP, (scale, bias) for SigLIP."""
        scale = self.logit_scale.exp()
        return (scale,) if self.logit_bias is None else (scale, self.logit_bias)


def make_batch(size: int, seed: int = 1) -> tuple[Tensor, Tensor]:
    """Random (size, IMAGE_DIM) images and (size, TEXT_DIM) texts, the same on every rank."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, IMAGE_DIM, generator=generator), torch.randn(size, TEXT_DIM, generator=generator)


def loss_and_grads(model: TinyTowers, loss_fn: nn.Module, images: Tensor, texts: Tensor) -> dict[str, Tensor]:
    """One forward and backward; returns the loss and every parameter's gradient by name."""
    model.zero_grad()
    loss = loss_fn(*model(images, texts), *model.loss_args())
    loss.backward()
    return {"loss": loss.detach(), **{name: p.grad.clone() for name, p in model.named_parameters()}}


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _ddp_step(rank: int, world_size: int, siglip: bool, loss_fn: nn.Module) -> dict[str, Tensor]:
    """This rank's half of the batch through the loss, then the loss and gradients averaged over ranks like DDP."""
    images, texts = make_batch(world_size * LOCAL_BATCH)
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    result = loss_and_grads(TinyTowers(siglip=siglip), loss_fn, images[rows], texts[rows])
    for value in result.values():
        dist.all_reduce(value)
        value /= world_size
    return result


def clip_job(rank: int, world_size: int) -> dict[str, dict[str, Tensor]]:
    return {name: _ddp_step(rank, world_size, False, ClipLoss(**kwargs)) for name, kwargs in CLIP_MODES.items()}


def siglip_job(rank: int, world_size: int) -> dict[str, dict[str, Tensor]]:
    return {name: _ddp_step(rank, world_size, True, SigLipLoss(**kwargs)) for name, kwargs in SIGLIP_MODES.items()}


def grad_cache_ddp_job(rank: int, world_size: int) -> dict[str, Tensor]:
    """Real DDP, 2 cached chunks per rank, ClipLoss gathering across ranks; logit_scale averaged by hand."""
    model = TinyTowers()
    # logit_scale is used by the loss only, never in DDP's forward: DDP must be told some parameters go unused.
    ddp = DistributedDataParallel(model, find_unused_parameters=True)
    images, texts = make_batch(world_size * 2 * LOCAL_BATCH)
    rows = slice(rank * 2 * LOCAL_BATCH, (rank + 1) * 2 * LOCAL_BATCH)
    loss_fn = ClipLoss()
    loss = cached_contrastive_backward(
        lambda chunk: ddp(chunk["images"], chunk["texts"]),
        split_batch({"images": images[rows], "texts": texts[rows]}, 2),
        lambda image_features, text_features: loss_fn(image_features, text_features, model.logit_scale.exp()),
        no_sync=ddp.no_sync,
    )
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    for value in (loss, grads["logit_scale"]):  # DDP averaged every other gradient
        dist.all_reduce(value)
        value /= world_size
    return {"loss": loss, **grads}


JOBS: dict[str, Callable[[int, int], dict]] = {
    "clip": clip_job,
    "siglip": siglip_job,
    "grad_cache_ddp": grad_cache_ddp_job,
}


def _worker(rank: int, world_size: int, port: int, out_dir: str, job: str) -> None:
    try:
        torch.set_num_threads(1)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=300))
        torch.save(JOBS[job](rank, world_size), Path(out_dir) / f"rank{rank}.pt")
        # Free the job's DDP reducer while its process group lives, and let no rank close its sockets while the
        # other is still tearing down: either race aborts a rank in gloo's C++ ("terminate called", exit -6).
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        (Path(out_dir) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise


def launch(job: str, world_size: int, out_dir: Path, timeout: float = 600.0) -> list[dict]:
    """Run ``job`` on ``world_size`` gloo processes; returns each rank's results, failing the test on error or hang."""
    from training.launch import free_port  # here, not at the top: the spawned workers import this module

    context = mp.get_context("spawn")
    port = free_port()
    procs = [
        context.Process(target=_worker, args=(rank, world_size, port, str(out_dir), job)) for rank in range(world_size)
    ]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    hung = [rank for rank, proc in enumerate(procs) if proc.is_alive()]
    for rank in hung:
        procs[rank].kill()
        procs[rank].join()
    errors = "\n".join(path.read_text() for path in sorted(out_dir.glob("rank*.err")))
    codes = [proc.exitcode for proc in procs]
    if hung or any(codes):
        pytest.fail(f"{job} workers failed (hung ranks {hung}, exit codes {codes}):\n{errors}")
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(world_size)]
