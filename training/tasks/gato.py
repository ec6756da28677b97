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
from multimodal.data import SampleDecoder, SampleStream, SkipStats, ensure_dataset, load_card, make_loader
from multimodal.data.cards import DatasetCard
from multimodal.data.control import Episode, env_spec, read_episodes
from multimodal.data.shards import read_shard
from multimodal.evaluation import evaluate_captioning, evaluate_control
from multimodal.pipelines.gato import control_layout
from multimodal.tokenizers import ClipTokenizer, SubsetTokenizer
from multimodal.tokenizers.gato import NUM_DISCRETE, TOKENIZER_FILE, GatoTokenizer, GatoTokens, collate_tokens

from ..config import TrainConfig
from .base import Task

__all__ = ["GatoTask", "split_batch"]


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

    def __init__(self, cfg: TrainConfig, acc=None) -> None:
        super().__init__(cfg, acc)
        cards = {key: load_card(key) for key in cfg.task.mixture}  # keys: card names or paths
        names = [card.name for card in cards.values()]
        if len(set(names)) != len(names):
            raise ValueError(f"task.mixture names two datasets with the same card name: {names}")
        self.cards: dict[str, DatasetCard] = {card.name: card for card in cards.values()}
        self.counts = split_batch({cards[k].name: share for k, share in cfg.task.mixture.items()}, cfg.data.batch_size)
        for name, card in self.cards.items():
            if not self.is_control(name) and card.format != "wds":
                raise ValueError(f"dataset {name!r}: captioning reads WebDataset shards, not an image folder")
        if not 0.0 <= cfg.task.prompt_prob <= 1.0:
            raise ValueError(f"task.prompt_prob must be in [0, 1], got {cfg.task.prompt_prob}")
        self._tokenizer: GatoTokenizer | None = None
        self._episodes: dict[tuple[str, str], list[Episode]] = {}
        self._tokens: dict[str, list[GatoTokens]] = {}

    def is_control(self, name: str) -> bool:
        return self.cards[name].generator == "control"

    def env(self, name: str):
        """The :class:`EnvSpec` of a control dataset."""
        return env_spec(self.cards[name].generator_args["env_id"])

    def prepare_data(self) -> None:
        for card in self.cards.values():
            ensure_dataset(card, progress=True)

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

    @property
    def tokenizer(self) -> GatoTokenizer:
        """The run's tokenizer (built on first use), its layout the model's: ``text_vocab_size``, bins, patch."""
        if self._tokenizer is None:
            from multimodal import create_model

            with torch.device("meta"):
                layout = create_model(self.cfg.model.name, **self.cfg.model.args).cfg
            if self.cfg.task.text_vocabulary == "captions":
                text = SubsetTokenizer.from_texts(self.caption_texts(self.cfg.data.train_split))
            else:
                text = ClipTokenizer()
            if layout.text_vocab_size < max(text.vocab_size, NUM_DISCRETE):
                raise ConfigError(
                    f"model.args.text_vocab_size={layout.text_vocab_size} cannot hold the {text.vocab_size} text "
                    f"ids of task.text_vocabulary={self.cfg.task.text_vocabulary} and the {NUM_DISCRETE} discrete "
                    f"ids; set it to at least {max(text.vocab_size, NUM_DISCRETE)}"
                )
            self._tokenizer = GatoTokenizer(
                text, text_vocab_size=layout.text_vocab_size, num_bins=layout.num_bins, patch_size=layout.patch_size
            )
        return self._tokenizer

    def build_model(self) -> nn.Module:
        model = super().build_model()
        cfg = model.cfg
        self.tokenizer.check_model(cfg)
        if self.acc is not None and self.acc.is_main_process:
            self.tokenizer.save(self.cfg.run_dir / TOKENIZER_FILE)
        for name in self.counts:
            if self.is_control(name):
                control_layout(self.env(name), cfg.context_length)  # raises if the context is too short
        self.context_length = cfg.context_length
        return model

    # --- data --------------------------------------------------------------------------------------------------

    def episodes(self, name: str, split: str) -> list[Episode]:
        if (name, split) not in self._episodes:
            self._episodes[name, split] = read_episodes(self.cards[name], split)
        return self._episodes[name, split]

    def episode_tokens(self, name: str) -> list[GatoTokens]:
        if name not in self._tokens:
            self._tokens[name] = [
                self.tokenizer.encode_arrays(e.observations, e.actions)
                for e in self.episodes(name, self.cfg.data.train_split)
            ]
        return self._tokens[name]

    def control_sequence(self, name: str, rng: np.random.Generator) -> GatoTokens:
        """One training sequence of dataset ``name``: [prompt from another episode] + a window of one episode."""
        episodes = self.episode_tokens(name)
        per_step, prompt_steps = control_layout(self.env(name), self.context_length)
        index = int(rng.integers(len(episodes)))
        parts = []
        if rng.random() < self.cfg.task.prompt_prob:
            other = int(rng.integers(len(episodes) - 1)) if len(episodes) > 1 else 0
            other += other >= index and len(episodes) > 1  # another episode than the window's
            demo = episodes[other]
            steps = len(demo) // per_step
            n = min(prompt_steps, steps)
            start = steps - n if rng.random() < 0.5 else int(rng.integers(steps - n + 1))
            parts.append(demo.slice(start * per_step, (start + n) * per_step))
        room = (self.context_length - sum(len(p) for p in parts)) // per_step
        episode = episodes[index]
        steps = len(episode) // per_step
        n = min(room, steps)
        start = int(rng.integers(steps - n + 1))
        parts.append(episode.slice(start * per_step, (start + n) * per_step))
        return GatoTokens.concat(parts)

    def caption_decoder(self, name: str, *, train: bool) -> SampleDecoder:
        card = self.cards[name]
        return SampleDecoder(
            image_size=self.cfg.data.image_size,
            image_key=card.image_key,
            text_key=card.text_key if train else None,
            captions_key=card.captions_key if train and self.cfg.data.caption_sampling == "random" else None,
            mean=(0.0, 0.0, 0.0),  # pixels stay in [0, 1]: the tokenizer normalises patches itself
            std=(1.0, 1.0, 1.0),
            seed=self.cfg.run.seed,
        )

    def train_batches(self, start_batch: int) -> Iterator[dict[str, Any]]:
        rank, world = self.rank_world()
        d, seed = self.cfg.data, self.cfg.run.seed
        captions = {}
        for name in self.counts:
            if not self.is_control(name):
                stream = SampleStream(
                    urls=self.cards[name].shard_urls(d.train_split),
                    decode=self.caption_decoder(name, train=True),
                    collate=partial(_caption_collate, tokenizer=self.tokenizer),
                    batch_size=self.counts[name],
                    seed=seed,
                    rank=rank,
                    world_size=world,
                    resampled=d.resampled,
                    shuffle_buffer=d.shuffle_buffer,
                    start_batch=start_batch,
                )
                captions[name] = iter(make_loader(stream, num_workers=d.num_workers, seed=seed))
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
                    parts[name] = collate_tokens([self.control_sequence(name, rng) for _ in range(count)])
                    keys += [f"{name}:{batch}:{j}" for j in range(count)]
            yield {"parts": parts, "size": sum(p["tokens"].shape[0] for p in parts.values()), "key": keys,
                   "skipped": skipped}  # fmt: skip
            batch += 1

    # --- loss ----------------------------------------------------------------------------------------------------

    def _targets(self, batch: dict[str, Any]) -> dict[str, int]:
        """Text and action targets of each dataset's sequences: what weighs its loss in the batch mean."""
        counts = {name: int(part["loss_mask"][:, 1:].sum()) for name, part in batch["parts"].items()}
        if not sum(counts.values()):
            raise ValueError("the batch has no text or action targets")
        return counts

    def _part(self, model: nn.Module, part: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        device = next(model.parameters()).device
        return model({k: v.to(device, non_blocking=True) for k, v in part.items()}, compute_loss=True)

    @staticmethod
    def _part_logs(name: str, logs: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {f"{name}_loss": logs["loss"]}
        for key in ("text_acc", "action_acc"):
            if key in logs:
                out[f"{name}_acc"] = logs[key]
        return out

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """Mean next-token loss over every text and action target of every dataset in the batch."""
        targets = self._targets(batch)
        total, logs = 0.0, {}
        for name, part in batch["parts"].items():
            loss, part_logs = self._part(model, part)
            total = total + loss * targets[name] / sum(targets.values())
            logs.update(self._part_logs(name, part_logs))
        return total, {"loss": total.detach(), **logs}

    def step(self, acc, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        """:meth:`loss`, with one forward and backward per dataset (each sequence length its own), gradients
        synchronised across processes only after the last."""
        targets = self._targets(batch)
        total, logs = 0.0, {}
        names = list(batch["parts"])
        for name in names:
            with acc.no_sync(model) if name != names[-1] else contextlib.nullcontext():
                loss, part_logs = self._part(model, batch["parts"][name])
                weighted = loss * targets[name] / sum(targets.values())
                acc.backward(weighted)
            total += weighted.detach()
            logs.update(self._part_logs(name, part_logs))
        return {"loss": total, **logs}

    # --- evaluation ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, model: nn.Module, *, step: int = 0) -> tuple[dict[str, float], SkipStats]:
        """Rollouts of ``task.eval_episodes`` per control dataset (mean return, expert-normalised score) and the
        captioning accuracy on ``task.eval_samples`` images of ``data.eval_split``."""
        inner = self.acc.unwrap_model(model) if self.acc is not None else model
        was_training = inner.training
        inner.eval()
        results: dict[str, float] = {}
        skips = SkipStats()
        try:
            for name in self.counts:
                if self.is_control(name):
                    if self.cfg.task.eval_episodes > 0:
                        out = evaluate_control(
                            inner, self.tokenizer, self.cards[name], episodes=self.cfg.task.eval_episodes
                        )
                        results[f"{name}_return"] = out["mean_return"]
                        results[f"{name}_score"] = out["normalised_score"]
                elif self.cfg.data.eval_split and self.cfg.task.eval_samples > 0:
                    out, skipped = evaluate_captioning(
                        inner, self.tokenizer, self.cards[name], self.cfg.data.eval_split,
                        samples=self.cfg.task.eval_samples, image_size=self.cfg.data.image_size,
                    )  # fmt: skip
                    results[f"{name}_caption_acc"] = out["accuracy"]
                    skips.merge(skipped)
        finally:
            inner.train(was_training)
        return results, skips
