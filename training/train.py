"""The trainer's command line: ``accelerate launch -m training.train RECIPE.yaml [key.sub=value ...]``.

``python -m training.train`` runs the same recipe in one process. A run directory holds ``config.yaml``,
``model.safetensors``, ``metrics.jsonl``, ``results.json``, TensorBoard logs and ``checkpoints/step-*``;
``resume=latest`` continues from the newest complete checkpoint at the exact sample it stopped at. The loop is
:class:`training.trainer.Trainer`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from multimodal._lazy import lazy_exports
from multimodal.cli import USER_ERRORS, HelpFormatter, one_line, one_line_warnings

from .config import TaskConfig, TrainConfig

__all__ = ["PeerLostError", "TrainingError", "load_config", "main", "train"]
# The trainer (torch, accelerate, the model families: seconds to import) is loaded once a recipe has been read, so
# that --help and a recipe's mistakes answer at once.
__getattr__, __dir__ = lazy_exports(
    __name__, {"PeerLostError": ".guard", "TrainingError": ".guard", "train": ".trainer"}
)

if TYPE_CHECKING:
    from .guard import PeerLostError, TrainingError
    from .trainer import train


def load_config(recipe: str | Path, overrides: list[str]) -> TrainConfig:
    """Read a recipe with its ``key.sub=value`` overrides; every key and type is checked."""
    return TrainConfig.load(recipe, overrides)


def _recipe_keys_help(width: int = 100) -> str:
    """Every recipe key with its default, a section per line (wrapped), for ``--help``; the ``task`` section once
    per task, with that task's options."""
    lines = ["recipe keys and their defaults (a recipe's values replace them; key.sub=value replaces both):"]
    for section, values in TrainConfig().to_dict().items():
        if not isinstance(values, dict):
            lines.append(f"  {section}={json.dumps(values)}")
            continue
        for value in [k().to_dict() for k in TaskConfig.kinds().values()] if section == "task" else [values]:
            items = " ".join(
                f"{k}={v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}" for k, v in value.items()
            )
            lines += textwrap.wrap(items, width, initial_indent=f"  {section:<8}", subsequent_indent=" " * 10)
    return "\n".join(lines)


def _print_error(e: Exception, *, every_rank: bool = False) -> None:
    if every_rank or int(os.environ.get("RANK", "0")) == 0:
        print(f"error: {one_line(e) if isinstance(e, USER_ERRORS) else e}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="accelerate launch -m training.train",
        description="Train a model from a YAML recipe; key.sub=value arguments override the recipe.",
        epilog=_recipe_keys_help(),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("recipe", help="a recipe, e.g. configs/vit/shapes.yaml")
    parser.add_argument("overrides", nargs="*", help="key.sub=value, e.g. optim.lr=3e-4 train.steps=200")
    args = parser.parse_args(argv)
    with one_line_warnings():
        try:
            cfg = load_config(args.recipe, args.overrides)
        except USER_ERRORS as e:
            _print_error(e)
            return 2
        from .checkpoint import CheckpointError
        from .guard import PeerLostError, TrainingError
        from .launch import LaunchError
        from .preemption import PREEMPTED_EXIT
        from .trainer import Trainer

        try:
            trainer = Trainer(cfg)
            trainer.build()  # a recipe its data or model refuses stops here, before anything is written
        except USER_ERRORS as e:
            _print_error(e, every_rank=isinstance(e, LaunchError))  # a lone worker with RANK=3 is its own rank 0
            return 2
        try:
            results = trainer.fit()
        except (CheckpointError, TrainingError) as e:
            _print_error(e, every_rank=isinstance(e, PeerLostError))
            return 1
    return PREEMPTED_EXIT if results.get("preempted") else 0


def _exit(code: int) -> None:
    """Leave with ``code``. A multi-process run that stopped on an error (a lost peer, above all) still has its
    process group and gloo's threads, which can abort interpreter teardown ("terminate called without an active
    exception", rc -6 instead of the 1 the error deserves): such a process flushes its output and leaves without
    that teardown; everything it keeps (checkpoints, metrics.jsonl, the error) is already written."""
    torch = sys.modules.get("torch")  # not imported when the recipe was refused
    if code != 0 and torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    _exit(main())
