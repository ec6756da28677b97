"""The interface between the trainer and a model family."""

from __future__ import annotations

import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

from accelerate import Accelerator
from torch import Tensor, nn

from multimodal.data import SampleStream, SkipStats, load_card, make_loader
from multimodal.data.cards import DatasetCard

from ..config import TrainConfig


class Task(ABC):
    """A family plugs into the trainer by subclassing this.

    The trainer calls, in order: ``resolve`` (fill in config values the data decides, before anything is
    written), ``prepare_data`` (main process first), ``build_model``, then ``train_batches``, ``step`` (which calls
    ``loss``) and ``after_step`` every step, and ``evaluate`` every ``train.eval_every`` steps.
    """

    def __init__(self, cfg: TrainConfig, acc: Accelerator | None) -> None:
        self.cfg = cfg
        self.acc = acc

    def rank_world(self) -> tuple[int, int]:
        """This process's rank and the number of processes (0, 1 without an accelerator)."""
        return (self.acc.process_index, self.acc.num_processes) if self.acc is not None else (0, 1)

    def train_loader(
        self, source: dict[str, Any], *, decode: Callable, collate: Callable, start_batch: int
    ) -> Iterable[dict[str, Any]]:
        """The endless, resumable loader of ``data.train_split`` from ``source`` (``urls=`` or ``items=``)."""
        d = self.cfg.data
        rank, world = self.rank_world()
        stream = SampleStream(
            **source,
            decode=decode,
            collate=collate,
            batch_size=d.batch_size,
            seed=self.cfg.run.seed,
            rank=rank,
            world_size=world,
            resampled=d.resampled,
            shuffle_buffer=d.shuffle_buffer,
            start_batch=start_batch,
        )
        return make_loader(stream, num_workers=d.num_workers, seed=self.cfg.run.seed)

    def load_card(self) -> DatasetCard:
        """The card of ``data.dataset``; an error names the key, so the user knows what to change."""
        try:
            return load_card(self.cfg.data.dataset)
        except (ValueError, OSError) as e:
            raise type(e)(f"data.dataset={self.cfg.data.dataset}: {e}") from None

    def warn(self, message: str) -> None:
        """``warnings.warn`` once per run, not once per process: on the main process only."""
        rank = self.acc.process_index if self.acc is not None else int(os.environ.get("RANK", "0"))
        if rank == 0:
            warnings.warn(message, stacklevel=3)

    def warn_small_split(self, dataset: str, split: str, num_samples: int | None) -> None:
        """Warn when a training split holds fewer samples than one batch of all processes."""
        world = self.rank_world()[1]
        batch = self.cfg.data.batch_size * world
        if num_samples and num_samples < batch:
            processes = f"{world} process" + ("es" if world > 1 else "")
            self.warn(
                f"dataset {dataset!r} split {split!r} has {num_samples} samples, fewer than one batch of {batch} "
                f"(data.batch_size x {processes}): every batch repeats samples about {batch / num_samples:.0f} "
                "times; lower data.batch_size"
            )

    def resolve(self) -> TrainConfig:
        return self.cfg

    def prepare_data(self) -> None:  # noqa: B027 (optional hook: most tasks have nothing to build)
        """Build generated datasets if missing; called on the main process before the others."""

    def build_model(self) -> nn.Module:
        from multimodal import create_model

        return create_model(self.cfg.model.name, **self.cfg.model.args)

    @abstractmethod
    def train_batches(self, start_batch: int) -> Iterable[dict[str, Any]]:
        """An endless, deterministic stream of this rank's batches, starting after ``start_batch`` of them."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss to minimise and detached scalars to log."""

    def step(self, acc: Accelerator, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Forward and backward of one (micro-)batch; returns the scalars to log. Override for custom backward
        passes (e.g. gradient caching)."""
        loss, logs = self.loss(model, batch)
        acc.backward(loss)
        return logs

    def after_step(self, model: nn.Module) -> None:  # noqa: B027 (optional hook)
        """Called with the unwrapped model after every optimizer step (e.g. to clamp CLIP's logit scale)."""

    def evaluate(self, model: nn.Module, *, step: int = 0) -> tuple[dict[str, float], SkipStats]:
        """Metrics computed on every rank's share of the evaluation split, identical on all ranks."""
        return {}, SkipStats()
