"""GATO rollouts in a control dataset's environment: each episode starts from an evaluation seed
(``multimodal.data.control.EVAL_SEED_START`` on, never in the data) and the model is prompted with the best-scoring
held-out (test split) expert episode; mean return and expert-normalised score (0 = the random policy, 1 = the
scripted expert; references from the dataset's manifest)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from torch import nn

from ..config import ConfigError
from ..data import ensure_dataset
from ..data.cards import DatasetCard
from ..data.control import EVAL_SEED_START, env_spec, normalised_score, read_episodes, run_episodes
from ..data.shards import read_manifest
from ..pipelines.gato import GatoAgent, Task
from ..tokenizers.gato import GatoTokenizer

__all__ = ["evaluate_control"]


def evaluate_control(
    model: nn.Module,
    tokenizer: GatoTokenizer,
    card: DatasetCard,
    *,
    episodes: int,
    first_seed: int = EVAL_SEED_START,
    task: Task = None,
) -> dict[str, Any]:
    """Roll ``model`` out for ``episodes`` episodes of the card's environment, all at once in lockstep; ``task``
    routes task-routed experts (:func:`~multimodal.pipelines.gato.route`)."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    env_id = card.generator_args.get("env_id")
    if env_id is None:
        raise ConfigError(f"dataset {card.name!r} is not a control dataset (its card names no generator_args.env_id)")
    ensure_dataset(card)
    manifest = read_manifest(card.root_dir)
    references = {k: manifest["reference_returns"][k] for k in ("random", "expert")}
    demos = read_episodes(card, "test")
    demonstration = max(demos, key=lambda e: e.total_return)
    agent = GatoAgent(model, tokenizer, env_spec(env_id), demonstration, task=task)
    start = time.perf_counter()
    rollouts = run_episodes(env_id, agent.policy(), range(first_seed, first_seed + episodes))
    returns = [e.total_return for e in rollouts]
    mean = float(np.mean(returns))
    return {
        "env_id": env_id,
        "episodes": episodes,
        "first_seed": first_seed,
        "mean_return": mean,
        "std_return": float(np.std(returns)),
        "normalised_score": normalised_score(mean, **references),
        "references": references,
        "returns": returns,
        "lengths": [e.length for e in rollouts],
        "demonstration": {"seed": demonstration.seed, "return": demonstration.total_return},
        "seconds": time.perf_counter() - start,
    }
