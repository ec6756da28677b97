"""Evaluators: functions that take models and data and return metrics (no argparse, no run directories; the ``eval``
CLIs load runs and print the tables)."""

from .captioning import evaluate_captioning
from .classification import eval_stream, evaluate_classifier
from .composition import diagnose_composition
from .control import evaluate_control
from .generation import (
    InceptionFeatures,
    Judge,
    PairJudge,
    evaluate_generation,
    frechet_distance,
    mean_over_seeds,
    prompt_set,
)
from .metrics import classification_metrics, gather_rows
from .retrieval import recall_at_k, retrieval_evaluate
from .zeroshot import card_prompts, topk_key, zeroshot_evaluate

__all__ = [
    "InceptionFeatures",
    "Judge",
    "PairJudge",
    "card_prompts",
    "classification_metrics",
    "diagnose_composition",
    "eval_stream",
    "evaluate_captioning",
    "evaluate_classifier",
    "evaluate_control",
    "evaluate_generation",
    "frechet_distance",
    "gather_rows",
    "mean_over_seeds",
    "prompt_set",
    "recall_at_k",
    "retrieval_evaluate",
    "topk_key",
    "zeroshot_evaluate",
]
