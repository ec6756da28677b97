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
from typing import Any

from multimodal.config import ConfigError

from .common import add_common_options, add_task_option, cli_parser, load_gato_run, run_cli, task_route, write_result

__all__ = ["main"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from multimodal.data import load_card
    from multimodal.data.control import ENVS, dataset_name
    from multimodal.evaluation import evaluate_control

    cfg, model, tokenizer = load_gato_run(args)
    mixture = (cfg.get("task") or {}).get("mixture") or {}
    trained = [card for card in (load_card(name) for name in mixture) if card.generator == "control"]
    if args.env == "all":
        if not trained:
            raise ConfigError(f"the run at {args.checkpoint} trained on no control dataset; pass --env")
        cards = trained
    else:
        if args.env not in ENVS:
            raise ConfigError(f"unknown env {args.env!r}; known envs: {', '.join(ENVS)} (or all)")
        # The run's own card of that env (its prompts, references and task name), else the env's standard card.
        cards = [c for c in trained if c.generator_args.get("env_id") == args.env][:1]
        cards = cards or [load_card(dataset_name(args.env))]
    results = {}
    print(f"{'env':28s} {'episodes':>8s} {'mean return':>12s} {'std':>8s} {'score':>7s}  (random, expert)")
    for card in cards:
        task = task_route(model, card.name, args.task)
        out = evaluate_control(model, tokenizer, card, episodes=args.episodes, task=task)
        refs = out["references"]
        print(
            f"{out['env_id']:28s} {out['episodes']:8d} {out['mean_return']:12.4g} {out['std_return']:8.4g} "
            f"{out['normalised_score']:7.3f}  ({refs['random']:.4g}, {refs['expert']:.4g})"  # MiniGrid returns are < 1
        )
        results[out["env_id"]] = out
    write_result(args, "control.json", {"checkpoint": str(args.checkpoint), "results": results})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = cli_parser("python -m eval.control", __doc__, "GATO run directory or checkpoints/step-* folder")
    parser.add_argument(
        "--env", default="all", help="an env id (CartPole-v1, Pendulum-v1, Acrobot-v1), or all: every env of the run"
    )
    parser.add_argument("--episodes", type=int, default=20, help="rollouts per env")
    add_task_option(parser)
    add_common_options(parser, no_ema=True, device="torch device to act on", out="RUN/eval/control.json")
    return run_cli(run, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
