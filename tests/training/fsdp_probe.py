"""Resume a sharded run and check, before the first step, that every parameter and optimizer moment equals what the
checkpoint holds; then train on. Run under ``accelerate launch -m tests.training.fsdp_probe RECIPE OUT KEY=VALUE...``.

The reference is read from the checkpoint without the trainer: the consolidated ``model.safetensors`` for the
weights and ``sharded/`` read whole by ``torch.distributed.checkpoint`` in one process for the optimizer moments.
The trainer's loaded state is gathered whole across processes. ``OUT`` (JSON) gets the largest differences.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from safetensors import safe_open
from safetensors.torch import load_file
from torch.distributed.checkpoint import HuggingFaceStorageReader
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

from training.config import TrainConfig
from training.sharding import SHARDED_DIR
from training.trainer import Trainer

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True, flatten_optimizer_state_dict=True)


def saved_moments(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The optimizer tensors of a sharded checkpoint, whole, read in this process alone."""
    folder = checkpoint / SHARDED_DIR
    shapes: dict[str, list[int]] = {}
    for file in folder.glob("*.safetensors"):
        with safe_open(file, framework="pt") as f:
            sharding = json.loads(f.metadata()["DCP_SHARDING_INFO"])
            for key in f.keys():  # noqa: SIM118 (safetensors' handle is not a dict)
                if key.startswith("optim."):
                    offsets, shape = sharding[key]["saved_offsets"], f.get_slice(key).get_shape()
                    size = [o + s for o, s in zip(offsets, shape, strict=True)]
                    shapes[key] = [max(a, b) for a, b in zip(shapes.get(key, size), size, strict=True)]
    whole = {key: torch.zeros(shape) for key, shape in shapes.items()}
    dcp.load(whole, storage_reader=HuggingFaceStorageReader(str(folder)), no_dist=True)
    return whole


def main(recipe: str, out: str, *overrides: str) -> None:
    trainer = Trainer(TrainConfig.load(recipe, overrides))
    trainer.setup()
    weights, moments = get_state_dict(trainer.model, trainer.optimizer, options=_FULL)
    if trainer.acc.is_main_process:
        checkpoint = trainer.resume_from
        saved_weights = load_file(checkpoint / "model.safetensors")
        saved = saved_moments(checkpoint)
        loaded = {f"optim.{k}": v for k, v in moments.items() if torch.is_tensor(v)}
        report = {
            "processes": trainer.acc.num_processes,
            "resumed_at": trainer.state.step,
            "weights": len(saved_weights),
            "moments": len(saved),
            "same_names": sorted(saved_weights) == sorted(weights) and sorted(saved) == sorted(loaded),
            "max_weight_diff": max(
                (weights[k].float() - v.float()).abs().max().item() for k, v in saved_weights.items()
            ),
            "max_moment_diff": max((loaded[k].float() - v.float()).abs().max().item() for k, v in saved.items()),
        }
    results = trainer.fit()
    if trainer.acc.is_main_process:
        report["step_after"] = results["step"]
        Path(out).write_text(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:])
