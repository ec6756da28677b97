"""GATO on a mixture of datasets: control demonstrations and captioned images, every batch holding all of them.

``task.mixture`` maps dataset cards to their share of each batch of ``data.batch_size`` sequences, e.g.
``{shapes: 0.4, cartpole: 0.2, pendulum: 0.4}``. A card whose generator is ``control`` gives expert episodes
(:mod:`multimodal.data.control`); any other card gives (image, caption) pairs. Each dataset's sequences are padded
only to their own length and the loss is the mean over all text and action targets of the batch, as if it were one
padded batch: a short caption does not cost a 256-token row.

Control sequences follow :func:`multimodal.pipelines.gato.control_layout`: a window of whole timesteps from a
uniformly drawn start, and with probability ``task.prompt_prob`` a prompt first, taken from another demonstration
of the same task, half the time from its end and half the time from a uniform start (GATO section 3.3).
All draws come from generators seeded by (run seed, batch index, dataset), so a resumed run replays them.

Text goes through open_clip's whole BPE (``task.text_vocabulary: bpe``, the default) or only the BPE tokens of the
mixture's training captions (``captions``), renumbered from 0 into a table of ``model.args.text_vocab_size`` ids:
on templated captions that cuts the output projection from 50k rows to about 2k, the largest cost of a CPU step.
The run saves its tokenizer as ``gato_tokenizer.json`` next to ``config.yaml``; the evaluation CLIs read it back.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from multimodal.config import ConfigError
from multimodal.data import SkipStats
from multimodal.data.cards import DatasetCard
from multimodal.data.control import Episode, env_spec, read_episodes
from multimodal.data.shards import read_shard
from multimodal.evaluation import evaluate_captioning, evaluate_control
from multimodal.pipelines.gato import control_layout, prompted_window
from multimodal.runs import load_gato_tokenizer
from multimodal.tokenizers import ClipTokenizer, SubsetTokenizer
from multimodal.tokenizers.gato import NUM_DISCRETE, TOKENIZER_FILE, GatoTokenizer, GatoTokens, collate_tokens

from ..config import TrainConfig
from ..task_options import GatoOptions
from .base import Task

__all__ = ["GatoOptions", "GatoTask", "split_batch"]

RAW_PIXELS = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # (mean, std): pixels stay in [0, 1], the tokenizer normalises patches


def split_batch(mixture: dict[str, float], batch_size: int) -> dict[str, int]:
    """Shares -> sequence counts summing to ``batch_size`` (largest remainder; every dataset gets at least one)."""
    if not mixture:
        raise ValueError(
            "task.mixture is empty: name the datasets and their shares, e.g. {shapes: 0.5, cartpole: 0.5}"
        )
    if any(not share > 0 for share in mixture.values()):
        raise ValueError(f"task.mixture shares must be > 0, got {mixture}")
    if batch_size < len(mixture):
        raise ValueError(f"data.batch_size={batch_size} cannot hold one sequence of each of {len(mixture)} datasets")
    total = sum(mixture.values())
    exact = {name: share / total * batch_size for name, share in mixture.items()}
    counts = {name: max(1, math.floor(x)) for name, x in exact.items()}
    by_remainder = sorted(mixture, key=lambda n: exact[n] - math.floor(exact[n]), reverse=True)
    while sum(counts.values()) < batch_size:
        for name in by_remainder:
            if sum(counts.values()) < batch_size:
                counts[name] += 1
    while sum(counts.values()) > batch_size:
        largest = max(counts, key=counts.get)
        counts[largest] -= 1
    return counts


def _caption_collate(samples: list[dict[str, Any]], tokenizer: GatoTokenizer) -> dict[str, Any]:
    sequences = [tokenizer.encode_caption(s["image"], s["text"]) for s in samples]
    return {"sequences": collate_tokens(sequences), "key": [s["key"] for s in samples]}


class GatoTask(Task):
    """One GATO model trained on every dataset of ``task.mixture`` at once."""

    Options = GatoOptions
    reads_dataset = False  # it reads the cards of task.mixture
    uses_every_parameter = False  # a control part never reaches the image patch encoder

    def __init__(self, cfg: TrainConfig, acc=None) -> None:
        super().__init__(cfg, acc)
        cards = {key: self.load_card(key, key=f"task.mixture.{key}") for key in self.opts.mixture}
        names = [card.name for card in cards.values()]
        if len(set(names)) != len(names):
            raise ValueError(f"task.mixture names two datasets with the same card name: {names}")
        self.cards: dict[str, DatasetCard] = {card.name: card for card in cards.values()}
        self.counts = split_batch(
            {cards[k].name: share for k, share in self.opts.mixture.items()}, cfg.data.batch_size
        )
        for name, card in self.cards.items():
            if not self.is_control(name) and card.format != "wds":
                raise ValueError(f"dataset {name!r}: captioning reads WebDataset shards, not an image folder")
        if not 0.0 <= self.opts.prompt_prob <= 1.0:
            raise ValueError(f"task.prompt_prob must be in [0, 1], got {self.opts.prompt_prob}")
        self._tokenizer: GatoTokenizer | None = None
        self._episodes: dict[tuple[str, str], list[Episode]] = {}
        self._tokens: dict[str, list[GatoTokens]] = {}

    def is_control(self, name: str) -> bool:
        return self.cards[name].generator == "control"

    def env(self, name: str):
        """The :class:`EnvSpec` of a control dataset."""
        return env_spec(self.cards[name].generator_args["env_id"])

    def prepare_data(self) -> None:
        self.ensure_datasets(*self.cards.values())

    def build_model(self) -> nn.Module:
        """The model; its context must hold a prompt and a window of every control dataset's timesteps."""
        model = super().build_model()
        for name in self.counts:
            if self.is_control(name):
                control_layout(self.env(name), model.cfg.context_length)  # raises if the context is too short
        missing = [name for name in self.counts if name not in model.cfg.tasks]
        if model.cfg.routes_by_task and missing:
            raise ConfigError(
                f"model.args.mlp={model.cfg.mlp} routes by task, and model.args.tasks {list(model.cfg.tasks)} lacks "
                f"{missing} of task.mixture; set model.args.tasks: [{', '.join(self.counts)}]"
            )
        return model

    def task_route(self, model: nn.Module, name: str) -> int | None:
        """Dataset ``name``'s task id for the model's task-routed experts; None for other models."""
        return self.unwrap(model).task_id(name)

    def caption_texts(self, split: str) -> list[str]:
        """Every caption (the text and the alternative captions of each sample) of the mixture's captioned
        datasets in ``split``, read from the shards without decoding the images (local shards only)."""
        texts = []
        for name, card in self.cards.items():
            if self.is_control(name):
                continue
            for url in card.shard_urls(split):
                for sample in read_shard(Path(url)):
                    if card.text_key in sample:
                        texts.append(sample[card.text_key].decode("utf-8"))
                    if card.captions_key and "json" in sample:
                        texts += json.loads(sample["json"]).get(card.captions_key, [])
        return texts

    def tokenizer(self, model: nn.Module) -> GatoTokenizer:
        """The run's tokenizer, its layout the model's (``text_vocab_size``, bins, patch); made once (after the data:
        ``task.text_vocabulary=captions`` reads the training captions) and saved next to the run's config. A model
        started from another run's weights (``model.init_from``) keeps that run's tokenizer: its token table is
        laid out for it."""
        if self._tokenizer is not None:
            return self._tokenizer
        layout = self.unwrap(model).cfg
        if self.cfg.model.init_from is not None:
            self._tokenizer = load_gato_tokenizer(self.cfg.model.init_from, self.unwrap(model))
        else:
            self._tokenizer = self._new_tokenizer(layout)
        if self.is_main_process and self.acc is not None:
            self._tokenizer.save(self.cfg.run_dir / TOKENIZER_FILE)
        return self._tokenizer

    def _new_tokenizer(self, layout) -> GatoTokenizer:
        if self.opts.text_vocabulary == "captions":
            text = SubsetTokenizer.from_texts(self.caption_texts(self.cfg.data.train_split))
        else:
            text = ClipTokenizer()
        if layout.text_vocab_size < max(text.vocab_size, NUM_DISCRETE):
            raise ConfigError(
                f"model.args.text_vocab_size={layout.text_vocab_size} cannot hold the {text.vocab_size} text "
                f"ids of task.text_vocabulary={self.opts.text_vocabulary} and the {NUM_DISCRETE} discrete "
                f"ids; set it to at least {max(text.vocab_size, NUM_DISCRETE)}"
            )
        return GatoTokenizer(
            text, text_vocab_size=layout.text_vocab_size, num_bins=layout.num_bins, patch_size=layout.patch_size
        )

    # --- data --------------------------------------------------------------------------------------------------

    def episodes(self, name: str, split: str) -> list[Episode]:
        if (name, split) not in self._episodes:
            self._episodes[name, split] = read_episodes(self.cards[name], split)
        return self._episodes[name, split]

    def episode_tokens(self, name: str, tokenizer: GatoTokenizer) -> list[GatoTokens]:
        if name not in self._tokens:
            self._tokens[name] = [
                tokenizer.encode_arrays(e.observations, e.actions)
                for e in self.episodes(name, self.cfg.data.train_split)
            ]
        return self._tokens[name]

    def control_sequence(self, episodes: list[GatoTokens], name: str, context: int, rng: np.random.Generator):
        """One training sequence of dataset ``name``: [prompt from another of its ``episodes``] + a window."""
        return prompted_window(episodes, self.env(name), context, rng, prompt_prob=self.opts.prompt_prob)

    def train_batches(self, model: nn.Module, start_batch: int) -> Iterator[dict[str, Any]]:
        """Each batch holds every dataset's share: captions from their own loaders, control windows drawn here."""
        tokenizer, context = self.tokenizer(model), self.unwrap(model).cfg.context_length
        rank, seed = self.rank_world()[0], self.cfg.run.seed
        tasks = {name: self.task_route(model, name) for name in self.counts}
        captions = {
            name: iter(self._caption_loader(name, count, tokenizer, start_batch))
            for name, count in self.counts.items()
            if not self.is_control(name)
        }
        batch = start_batch
        while True:
            parts, keys, skipped = {}, [], []
            for i, (name, count) in enumerate(self.counts.items()):
                if name in captions:
                    out = next(captions[name])
                    skipped += out.get("skipped", [])
                    if not out["size"]:  # every caption sample was unusable: this batch goes without captions
                        continue
                    keys += out["key"]
                    parts[name] = out["sequences"]
                else:
                    rng = np.random.default_rng([seed, batch, rank, i])
                    episodes = self.episode_tokens(name, tokenizer)
                    parts[name] = collate_tokens(
                        [self.control_sequence(episodes, name, context, rng) for _ in range(count)]
                    )
                    keys += [f"{name}:{batch}:{j}" for j in range(count)]
                if tasks[name] is not None:
                    parts[name]["task"] = torch.full((parts[name]["tokens"].shape[0],), tasks[name])
            yield {"parts": parts, "size": sum(p["tokens"].shape[0] for p in parts.values()), "key": keys,
                   "skipped": skipped}  # fmt: skip
            batch += 1

    def _caption_loader(self, name: str, count: int, tokenizer: GatoTokenizer, start_batch: int):
        card = self.cards[name]
        source = self.train_source(card)
        return self.train_loader(
            source,
            decode=self.decoder(card, train=True, text=True, normalise=RAW_PIXELS),
            collate=partial(_caption_collate, tokenizer=tokenizer),
            start_batch=start_batch,
            batch_size=count,
        )

    # --- loss ----------------------------------------------------------------------------------------------------

    def _weighted_part(self, model: nn.Module, batch: dict[str, Any], name: str) -> tuple[Tensor, dict[str, Tensor]]:
        """One dataset's mean next-token loss, weighted by its share of the batch's text and action targets, and
        its logs."""
        targets = {n: int(part["loss_mask"][:, 1:].sum()) for n, part in batch["parts"].items()}
        if not sum(targets.values()):
            raise ValueError("the batch has no text or action targets")
        device = next(model.parameters()).device
        part = {k: v.to(device, non_blocking=True) for k, v in batch["parts"][name].items()}
        loss, logs = model(part, compute_loss=True)
        out = {f"{name}_loss": logs["loss"]}
        aux = self.unwrap(model).aux_loss  # the experts' load balancing; zero for dense MLPs
        if aux.requires_grad:
            loss = loss + self.opts.aux_loss_weight * aux
            out["aux_loss"] = aux.detach()
        for key in ("text_acc", "action_acc"):
            if key in logs:
                out[f"{name}_acc"] = logs[key]
        return loss * targets[name] / sum(targets.values()), out

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """Mean next-token loss over every text and action target of every dataset in the batch."""
        results = [self._weighted_part(model, batch, name) for name in batch["parts"]]
        total = sum(loss for loss, _ in results)
        return total, {"loss": total.detach(), **{k: v for _, logs in results for k, v in logs.items()}}

    def step(self, acc, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        """:meth:`loss`, with one forward and backward per dataset (each sequence length its own), gradients
        synchronised across processes only after the last."""
        total, logs, last = 0.0, {}, list(batch["parts"])[-1]
        for name in batch["parts"]:
            with acc.no_sync(model) if name != last else contextlib.nullcontext():
                loss, part_logs = self._weighted_part(model, batch, name)
                acc.backward(loss)
            total += loss.detach()
            logs.update(part_logs)
        return {"loss": total, **logs}

    # --- evaluation ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, model: nn.Module, *, step: int = 0) -> tuple[dict[str, float], SkipStats]:
        """Rollouts of ``task.eval_episodes`` per control dataset (mean return, expert-normalised score) and the
        captioning accuracy on ``task.eval_samples`` images of ``data.eval_split``."""
        inner = self.unwrap(model)
        tokenizer = self.tokenizer(inner)
        results: dict[str, float] = {}
        skips = SkipStats()
        with self.evaluation_mode(inner):
            for name in self.counts:
                if self.is_control(name) and self.opts.eval_episodes > 0:
                    out = evaluate_control(
                        inner, tokenizer, self.cards[name], episodes=self.opts.eval_episodes,
                        task=self.task_route(inner, name),
                    )  # fmt: skip
                    results[f"{name}_return"] = out["mean_return"]
                    results[f"{name}_score"] = out["normalised_score"]
                elif not self.is_control(name) and self.cfg.data.eval_split and self.opts.eval_samples > 0:
                    out, skipped = evaluate_captioning(
                        inner, tokenizer, self.cards[name], self.cfg.data.eval_split,
                        samples=self.opts.eval_samples, image_size=self.cfg.data.image_size,
                        task=self.task_route(inner, name),
                    )  # fmt: skip
                    results[f"{name}_caption_acc"] = out["accuracy"]
                    skips.merge(skipped)
        return results, skips
