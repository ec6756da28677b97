"""Train a recipe under DDP and save every process's parameters, before and after: DDP keeps the replicas equal only
if every gradient was all-reduced. Run under ``accelerate launch -m tests.training.ddp_probe RECIPE OUT KEY=VALUE...``;
process ``r`` writes ``OUT/initial-r.safetensors`` and ``OUT/final-r.safetensors``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from safetensors.torch import save_file

from training.config import TrainConfig
from training.trainer import Trainer


def main(recipe: str, out: str, *overrides: str) -> None:
    trainer = Trainer(TrainConfig.load(recipe, overrides))
    trainer.setup()
    model, rank = trainer.acc.unwrap_model(trainer.model), trainer.acc.process_index
    Path(out).mkdir(parents=True, exist_ok=True)
    weights = lambda: {name: p.detach().clone().contiguous() for name, p in model.named_parameters()}  # noqa: E731
    save_file(weights(), Path(out) / f"initial-{rank}.safetensors")
    trainer.fit()
    save_file(weights(), Path(out) / f"final-{rank}.safetensors")


if __name__ == "__main__":
    main(*sys.argv[1:])
