"""Roll a GATO run out in its environments: ``python -m eval.control --checkpoint RUN --env CartPole-v1``.

Each episode starts from an evaluation seed (``multimodal.data.control.EVAL_SEED_START`` on, never in the data) and
the model is prompted with a successful demonstration: the best-scoring held-out (test split) expert episode, whose
last timesteps fill half of the context. Prints, per environment, the mean return, the expert-normalised score
(0 = the random policy, 1 = the scripted expert; references from the dataset's manifest) and the per-episode
returns, and writes them as JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from torch import nn

from multimodal import load_checkpoint
from multimodal.checkpoint import read_run_config, run_dir
from multimodal.cli import HelpFormatter, add_threads_argument
from multimodal.config import ConfigError
from multimodal.data import load_card
from multimodal.data.control import ENVS, dataset_name
from multimodal.evaluation import evaluate_control
from multimodal.tokenizers.gato import TOKENIZER_FILE, GatoTokenizer

from .common import run_cli, write_result

__all__ = ["gato_tokenizer", "main"]


def gato_tokenizer(checkpoint: str | Path, model: nn.Module) -> GatoTokenizer:
    """The tokenizer the run trained with (its ``gato_tokenizer.json``; open_clip's whole BPE for a run that saved
    none), checked against the model's vocabulary layout."""
    path = run_dir(Path(checkpoint)) / TOKENIZER_FILE
    tokenizer = GatoTokenizer.load(path) if path.is_file() else GatoTokenizer()
    tokenizer.check_model(model.cfg)
    return tokenizer


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = read_run_config(args.checkpoint, task="gato")
    model = load_checkpoint(args.checkpoint, ema=False if args.no_ema else None, device=args.device)
    tokenizer = gato_tokenizer(args.checkpoint, model)
    if args.env == "all":
        mixture = (cfg.get("task") or {}).get("mixture") or {}
        cards = [load_card(name) for name in mixture]
        cards = [c for c in cards if c.generator == "control"]
        if not cards:
            raise ConfigError(f"the run at {args.checkpoint} trained on no control dataset; pass --env")
    else:
        if args.env not in ENVS:
            raise ConfigError(f"unknown env {args.env!r}; known envs: {', '.join(ENVS)} (or all)")
        cards = [load_card(dataset_name(args.env))]
    results = {}
    print(f"{'env':14s} {'episodes':>8s} {'mean return':>12s} {'std':>8s} {'score':>7s}  (random, expert)")
    for card in cards:
        out = evaluate_control(model, tokenizer, card, episodes=args.episodes)
        refs = out["references"]
        print(
            f"{out['env_id']:14s} {out['episodes']:8d} {out['mean_return']:12.1f} {out['std_return']:8.1f} "
            f"{out['normalised_score']:7.3f}  ({refs['random']:.1f}, {refs['expert']:.1f})"
        )
        results[out["env_id"]] = out
    path = Path(args.out) if args.out else Path(args.checkpoint) / "eval" / "control.json"
    write_result(path, {"checkpoint": str(args.checkpoint), "results": results})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.control", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="GATO run directory or checkpoints/step-* folder")
    parser.add_argument(
        "--env", default="all", help="an env id (CartPole-v1, Pendulum-v1), or all: every env of the run"
    )
    parser.add_argument("--episodes", type=int, default=20, help="rollouts per env")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights even if the run kept an EMA")
    parser.add_argument("--device", default="cpu", help="torch device to act on, e.g. cuda")
    parser.add_argument("--out", help="JSON path (default: RUN/eval/control.json)")
    add_threads_argument(parser)
    return run_cli(run, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
