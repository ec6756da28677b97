"""Fully sharded data parallel (FSDP2, ``train.fsdp=true``): what becomes a unit, and sharded checkpoints.

One policy serves every family: each transformer block (:class:`multimodal.nn.Block`: ViT, both CLIP towers, the
prior, GATO), each residual block of GATO's image tokenizer, each stage of a ResNet and each down, middle and up
block of a diffusers UNet becomes its own unit; the rest (embeddings, GATO's tied embedding and output, final norms
and heads) lives in the root unit, so tied weights stay in one unit. A scalar parameter (CLIP's ``logit_scale`` and
SigLIP's ``logit_bias``) has no dimension to shard: it stays whole on every process, like under DDP, and its
gradient is averaged across processes as soon as it is computed. Buffers (batch-norm statistics) are not sharded
either: as DDP does, each training forward pass starts from the main process's, and a checkpoint keeps the main
process's. The same calls run on GPUs and on a CPU mesh over gloo (Accelerate does not shard on a CPU).

A sharded checkpoint keeps each rank's slices of the weights and optimizer moments in ``sharded/`` through
``torch.distributed.checkpoint`` in its safetensors format, whose index is JSON: loading it unpickles nothing, and it
loads on any number of processes. The optimizer's plain values (learning rates, betas) go to ``state.json``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from multimodal.nn import Block

__all__ = [
    "SHARDED_DIR",
    "full_state_dict",
    "is_sharded",
    "load_sharded",
    "local_bytes",
    "save_sharded",
    "shard_model",
    "shard_units",
    "unsharded",
]

SHARDED_DIR = "sharded"
_UNET_PARTS = ("down_blocks", "up_blocks")
_RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
_FLAT = StateDictOptions(flatten_optimizer_state_dict=True)
_NO_OPTIMIZER_STATE = "no_state_yet"  # in state.json's "optimizer": a checkpoint from before the first step


def shard_units(model: nn.Module) -> list[str]:
    """The names of the modules of ``model`` that become their own FSDP unit, innermost first (the root is last
    and not listed)."""
    units = []
    for name, module in model.named_modules():
        parent, _, leaf = name.rpartition(".")
        if (
            isinstance(module, Block)
            or type(module).__name__ == "PatchResNetBlock"
            or leaf == "mid_block"
            or parent.rpartition(".")[2] in _UNET_PARTS
            or (leaf in _RESNET_STAGES and isinstance(module, nn.Sequential))
        ):
            units.append(name)
    return sorted(units, key=lambda n: -n.count("."))  # a unit inside another is sharded first


def shard_model(model: nn.Module, device_type: str, world_size: int, *, precision: str = "no") -> nn.Module:
    """Shard ``model`` in place over a one-dimensional mesh of all processes (``device_type``: "cpu" or "cuda").
    With ``precision="bf16"`` each unit computes in bf16 and reduces gradients in fp32; the shards stay fp32."""
    if world_size == 1 and not dist.is_initialized():  # one process: no launcher made a group, and FSDP needs one
        dist.init_process_group(
            "nccl" if device_type == "cuda" else "gloo", store=dist.HashStore(), rank=0, world_size=1
        )
    mesh = init_device_mesh(device_type, (world_size,))
    compute = torch.bfloat16 if precision == "bf16" else None
    policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32 if compute else None)
    modules = dict(model.named_modules())
    for name in shard_units(model):
        fully_shard(modules[name], mesh=mesh, mp_policy=policy)
    scalars = {p for p in model.parameters() if p.ndim == 0}
    fully_shard(model, mesh=mesh, mp_policy=policy, ignored_params=scalars)
    for param in scalars:  # replicated, as under DDP: FSDP leaves their gradients to us
        param.register_post_accumulate_grad_hook(_average_gradient)
    if world_size > 1 and any(True for _ in model.buffers()):
        model.register_forward_pre_hook(_broadcast_buffers_in_training)
    return model


def _broadcast_buffers_in_training(model: nn.Module, args: Any) -> None:
    if model.training and torch.is_grad_enabled():
        broadcast_buffers(model)


def broadcast_buffers(model: nn.Module) -> None:
    """Every process takes the main process's buffers (DDP's ``broadcast_buffers``)."""
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def _average_gradient(param: torch.Tensor) -> None:
    if dist.get_world_size() > 1:
        dist.all_reduce(param.grad)
        param.grad /= dist.get_world_size()


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def _fsdp_modules(model: nn.Module) -> list[FSDPModule]:
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def unsharded(model: nn.Module) -> Iterator[nn.Module]:
    """Every unit's full weights gathered for the duration, so forward passes need no collective: evaluation may
    then run a different number of batches on each process. Resharded afterwards."""
    if not is_sharded(model):
        yield model
        return
    units = _fsdp_modules(model)
    for unit in units:
        unit.set_reshard_after_forward(False)
        unit.unshard()
    try:
        yield model
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The consolidated weights of a sharded model on the main process (CPU); empty elsewhere. Every process calls
    this."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"model.{k}": v for k, v in get_model_state_dict(model).items()}


def _split(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors of the model's and optimizer's state (sharded ones as DTensors) and the optimizer's plain values.

    An optimizer without state yet gets one from this (PyTorch's helper takes a step of zero gradients at learning
    rate 0): its step count is then 1 before any real step, so callers ask only once the optimizer has stepped."""
    weights, optim = get_state_dict(model, optimizer, options=_FLAT)
    tensors = {f"model.{k}": v for k, v in weights.items()}
    plain = {}
    for key, value in optim.items():
        if torch.is_tensor(value):
            tensors[f"optim.{key}"] = value
        else:
            plain[key] = list(value) if isinstance(value, tuple) else value
    return tensors, plain


def save_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Write this rank's slices of weights and optimizer state into ``folder/sharded`` (every process calls this);
    returns the optimizer's plain values, for ``state.json``."""
    if dist.get_world_size() > 1:
        broadcast_buffers(model)  # whole on every process, so every rank's copy is the main process's
    if not optimizer.state:  # before the first step (a stop signal at start-up): the model only, see _split
        tensors, plain = _model_tensors(model), {_NO_OPTIMIZER_STATE: True}
    else:
        tensors, plain = _split(model, optimizer)
    dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(folder / SHARDED_DIR), save_distributed=True))
    return plain


def load_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, plain: dict[str, Any]) -> None:
    """Load ``folder/sharded`` into the sharded ``model`` and ``optimizer``, whatever number of processes wrote
    it (every process calls this)."""
    if plain.get(_NO_OPTIMIZER_STATE):
        tensors = _model_tensors(model)
        dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(folder / SHARDED_DIR)))
        set_model_state_dict(model, {k.removeprefix("model."): v for k, v in tensors.items()})
        return
    tensors, _ = _split(model, optimizer)
    dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(folder / SHARDED_DIR)))
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    optim = {k.removeprefix("optim."): v for k, v in tensors.items() if k.startswith("optim.")}
    optim.update({k: tuple(v) if isinstance(v, list) else v for k, v in plain.items()})
    set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=optim, options=_FLAT)


def local_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes this process holds of the model's parameters and the optimizer's state (its shards under FSDP)."""
    tensors = list(model.parameters())
    for state in optimizer.state.values():
        tensors += [v for v in state.values() if torch.is_tensor(v)]
    local = [t.to_local() if isinstance(t, DTensor) else t for t in tensors]
    return sum(t.numel() * t.element_size() for t in local)
