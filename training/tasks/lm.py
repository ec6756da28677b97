"""Language modelling on generated sequences (:class:`~multimodal.data.sequences.MarkovRepeats`): the toy setting of
"A Mathematical Framework for Transformer Circuits", where induction heads form.

Evaluation reports the loss on the first half (bigram statistics only) and on the repeat (copyable in context),
and each layer's best previous-token and induction score on held-out sequences.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from multimodal.circuits import attention_patterns, induction_scores, previous_token_scores, repeated_tokens
from multimodal.data import SkipStats
from multimodal.data.sequences import BOS, MarkovRepeats
from multimodal.evaluation.circuits import next_token_losses, sequence_losses

from ..config import TrainConfig
from ..task_options import LmOptions
from .base import Task

EVAL_SEED = 1_000_000  # held-out sequences come from a stream no training batch uses


class LmTask(Task):
    """Next-token prediction on ``[BOS] s s`` sequences; the model is any ``(B, N) ids -> (B, N, V) logits`` LM."""

    Options = LmOptions
    reads_dataset = False  # the sequences are generated

    def __init__(self, cfg: TrainConfig, acc=None) -> None:
        super().__init__(cfg, acc)
        o = self.opts
        self.data = MarkovRepeats(**{f.name: getattr(o, f.name) for f in dataclasses.fields(MarkovRepeats)})
        self.chain = self.data.logits()

    def resolve(self) -> TrainConfig:
        args = dict(self.cfg.model.args or {})
        for key, value in (("vocab_size", self.opts.vocab_size), ("context_length", self.data.length)):
            if args.get(key, value) != value:
                raise ValueError(f"model.args.{key}={args[key]} disagrees with the task's {value}; drop it or match")
            args[key] = value
        return self.cfg.replace(model={"args": args})

    def train_batches(self, model: nn.Module, start_batch: int) -> Iterator[dict[str, Any]]:
        rank, world = self.rank_world()
        size, seed = self.cfg.data.batch_size, self.cfg.run.seed
        index = start_batch
        while True:
            tokens, periods = self.data.batch(size, seed=seed * world + rank, index=index, logits=self.chain)
            keys = [f"{rank}:{index}:{i}" for i in range(size)]
            yield {"tokens": tokens, "periods": periods, "size": size, "key": keys, "skipped": []}
            index += 1

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        tokens = batch["tokens"].to(next(model.parameters()).device)
        per_token = next_token_losses(model(tokens), tokens)  # (B, N-1): position t predicts token t+1
        halves = sequence_losses(per_token.detach(), batch["periods"], self.data)
        logs = {
            "loss": per_token.mean().detach(),
            "first_half_loss": halves["first"],  # bigram statistics only
            "repeat_loss": halves["repeat"],  # copyable from the first occurrence
        }
        return per_token.mean(), logs

    def evaluate(self, model: nn.Module, *, step: int = 0) -> tuple[dict[str, float], SkipStats]:
        net, o = self.unwrap(model), self.opts
        tokens, periods = self.data.batch(o.eval_sequences, seed=EVAL_SEED, index=0, logits=self.chain)
        with self.evaluation_mode(net):
            _, logs = self.loss(net, {"tokens": tokens, "periods": periods})
            metrics = {k: float(v) for k, v in logs.items()}
            if getattr(net, "transformer", None) is not None:
                gen = torch.Generator().manual_seed(EVAL_SEED)
                scored = repeated_tokens(64, o.score_period, o.vocab_size, low=1, prefix=[BOS], generator=gen)
                patterns = attention_patterns(net, scored)
                induction = induction_scores(patterns, o.score_period, prefix=1)  # (L, H)
                previous = previous_token_scores(patterns)
                for layer in range(len(induction)):
                    metrics[f"induction_max_l{layer}"] = induction[layer].max().item()
                    metrics[f"previous_token_max_l{layer}"] = previous[layer].max().item()
        return metrics, SkipStats()
