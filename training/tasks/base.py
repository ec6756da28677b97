"""The interface between the trainer and a model family, and what every family's task shares."""

from __future__ import annotations

import contextlib
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from accelerate import Accelerator
from torch import Tensor, nn
from torchvision.utils import save_image

from multimodal.data import (
    SampleDecoder,
    SampleStream,
    SkipStats,
    collate,
    ensure_dataset,
    folder_samples,
    load_card,
    make_loader,
)
from multimodal.data.cards import DatasetCard
from multimodal.io import atomic_path

from ..config import TaskConfig, TrainConfig

__all__ = ["Task", "collate_captions"]

UNIT_RANGE = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # (mean, std) for images in [-1, 1], as diffusion models take them


def collate_captions(samples: list[dict[str, Any]], tokenizer: Callable[[list[str]], Tensor]) -> dict[str, Any]:
    """:func:`collate`, plus the captions tokenized (B, context_length), in the loader workers."""
    batch = collate(samples)
    batch["tokens"] = tokenizer(batch["text"])
    return batch


class Task(ABC):
    """A family plugs into the trainer by subclassing this and declaring its ``task:`` options.

    The trainer makes one task per process and calls, in order: :meth:`resolve` (the recipe as it will run:
    values the data decides written into it, before anything is written), :meth:`build_model`, :meth:`prepare_data`
    (main process first), then :meth:`train_batches` once, :meth:`step` and :meth:`after_step` every step, and
    :meth:`evaluate` every ``train.eval_every`` steps.
    """

    Options: ClassVar[type[TaskConfig]]  # the ``task:`` section of this family's recipes
    reads_dataset: ClassVar[bool] = True  # whether it trains on ``data.dataset`` (kept as ``self.card``)
    # False where a step's synchronised backward may leave parameters without a gradient (GATO: a control part, the
    # last of its step, never reaches the image patch encoder); DDP then finds them each step and reduces them too
    uses_every_parameter: ClassVar[bool] = True

    def __init__(self, cfg: TrainConfig, acc: Accelerator | None) -> None:
        self.cfg = cfg
        self.acc = acc
        if self.reads_dataset:
            self.card = self.load_card()

    @property
    def opts(self) -> Any:
        """This task's options: ``cfg.task``, an instance of :attr:`Options`."""
        return self.cfg.task

    # --- what a family provides --------------------------------------------------------------------------------

    def resolve(self) -> TrainConfig:
        """The recipe as it will run: values the data decides (label keys, class counts, sizes) written into it.
        The trainer keeps what this returns, as ``task.cfg`` too."""
        return self.cfg

    def build_model(self) -> nn.Module:
        """The model of ``model.name`` and ``model.args``; families check it against their data here."""
        return self.cfg.model.build()

    def prepare_data(self) -> None:
        """Build generated datasets if missing (``data.dataset``'s); called on the main process before the others."""
        if self.reads_dataset:
            self.ensure_datasets(self.card)

    @abstractmethod
    def train_batches(self, model: nn.Module, start_batch: int) -> Iterable[dict[str, Any]]:
        """An endless, deterministic stream of this rank's batches for ``model``, after ``start_batch`` of them."""

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

    # --- what families share -----------------------------------------------------------------------------------

    @property
    def is_main_process(self) -> bool:
        return self.acc.is_main_process if self.acc is not None else int(os.environ.get("RANK", "0")) == 0

    def rank_world(self) -> tuple[int, int]:
        """This process's rank and the number of processes (0, 1 without an accelerator)."""
        return (self.acc.process_index, self.acc.num_processes) if self.acc is not None else (0, 1)

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The model without its DDP (or other) wrapper."""
        return self.acc.unwrap_model(model) if self.acc is not None else model

    @staticmethod
    @contextlib.contextmanager
    def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
        """``model`` in eval mode, without gradients, put back in the mode it was in afterwards."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                yield model
        finally:
            model.train(was_training)

    def load_card(self, dataset: str | None = None, *, key: str = "data.dataset") -> DatasetCard:
        """The card of ``dataset`` (default ``data.dataset``); an error names the key, so the user knows what to
        change."""
        dataset = self.cfg.data.dataset if dataset is None else dataset
        try:
            return load_card(dataset)
        except (ValueError, OSError) as e:
            raise type(e)(f"{key}={dataset}: {e}") from None

    def ensure_datasets(self, *cards: DatasetCard) -> None:
        for card in cards:
            ensure_dataset(card, progress=True)

    def source(self, card: DatasetCard, split: str) -> tuple[dict[str, Any], int | None]:
        """Where a split's samples come from (``items=`` of an image folder or ``urls=`` of shards, as
        :class:`SampleStream` takes them) and how many there are (None: unknown)."""
        if card.format == "folder":
            items = folder_samples(card.folder(split))
            return {"items": items}, len(items)
        return {"urls": card.shard_urls(split)}, card.split(split).num_samples

    def train_source(self, card: DatasetCard | None = None) -> dict[str, Any]:
        """The source of ``data.train_split`` of ``card`` (default: the task's), with a warning when it holds
        fewer samples than one batch of all processes."""
        card, split = card or self.card, self.cfg.data.train_split
        source, num_samples = self.source(card, split)
        self.warn_small_split(card.name, split, num_samples)
        return source

    def decoder(
        self,
        card: DatasetCard,
        *,
        train: bool,
        text: bool = False,
        label: str | None = None,
        normalise: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    ) -> SampleDecoder:
        """The sample decoder of ``card``: images at ``data.image_size`` normalised with ``data.mean``/``data.std``
        (or ``normalise``) and distorted as ``data.distort`` says; in training ``data.augment`` and, with ``text``,
        the caption (one of the alternatives under ``data.caption_sampling=random``); the ``label`` key if given."""
        d = self.cfg.data
        mean, std = normalise or (d.mean, d.std)
        captions = text and train and d.caption_sampling == "random"
        return SampleDecoder(
            image_size=d.image_size,
            image_key=card.image_key,
            text_key=card.text_key if text and train else None,
            captions_key=card.captions_key if captions else None,
            label_key=label,
            mean=mean,
            std=std,
            augment=d.augment if train else "none",
            seed=self.cfg.run.seed,
            distort=d.distort,
            fixed_distortion=not train,
        )

    def train_loader(
        self, source: dict[str, Any], *, decode: Callable, collate: Callable, start_batch: int, batch_size: int = 0
    ) -> Iterable[dict[str, Any]]:
        """The endless, resumable loader of this rank's batches from ``source`` (``urls=`` or ``items=``);
        ``batch_size`` defaults to ``data.batch_size``."""
        d = self.cfg.data
        rank, world = self.rank_world()
        stream = SampleStream(
            **source,
            decode=decode,
            collate=collate,
            batch_size=batch_size or d.batch_size,
            seed=self.cfg.run.seed,
            rank=rank,
            world_size=world,
            resampled=d.resampled,
            shuffle_buffer=d.shuffle_buffer,
            start_batch=start_batch,
        )
        return make_loader(stream, num_workers=d.num_workers, seed=self.cfg.run.seed)

    def save_samples(self, images: Tensor, step: int, *, nrow: int) -> Path | None:
        """Save a grid of images in [-1, 1] as ``samples/step-N.png`` of the run (main process); returns it."""
        if not self.is_main_process:
            return None
        out = self.cfg.run_dir / "samples" / f"step-{step:08d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            save_image(images * 0.5 + 0.5, tmp, nrow=nrow, format="png")
        return out

    def warn(self, message: str) -> None:
        """``warnings.warn`` once per run, not once per process: on the main process only."""
        if self.is_main_process:
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
