"""Image classification: any registered image model, labels from a dataset card."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from multimodal.config import ConfigError
from multimodal.data import SampleDecoder, SkipStats, collate, ensure_dataset, make_loader
from multimodal.data.stream import folder_samples
from multimodal.evaluation import eval_stream, evaluate_classifier

from ..config import TrainConfig
from .base import Task


class ClassificationTask(Task):
    """Cross-entropy on ``data.label`` of the card; top-1/top-5/mean per-class recall on ``data.eval_split``."""

    def __init__(self, cfg: TrainConfig, acc=None) -> None:
        super().__init__(cfg, acc)
        self.card = self.load_card()
        if not self.card.labels:
            raise ConfigError(
                f"dataset {self.card.name!r} has no labels, which a classification task needs; set data.dataset to "
                "an image folder with class subfolders or a card that declares labels (see datasets/README.md)"
            )
        self.label = cfg.data.label or next(iter(self.card.labels))
        self.classes = self.card.class_names(self.label, key="data.label")
        self.card.split(cfg.data.train_split, key="data.train_split")
        if cfg.data.eval_split is not None:
            self.card.split(cfg.data.eval_split, key="data.eval_split")

    def resolve(self) -> TrainConfig:
        """Fill in the label key, the class count and the image size the data implies."""
        args = dict(self.cfg.model.args)
        args.setdefault("num_classes", len(self.classes))
        args.setdefault("img_size", self.cfg.data.image_size)
        if args["num_classes"] != len(self.classes):
            raise ValueError(
                f"model.args.num_classes={args['num_classes']} but {self.card.name}:{self.label} has "
                f"{len(self.classes)} classes; drop the override or pick another data.label"
            )
        return self.cfg.replace(model={"args": args}, data={"label": self.label})

    def prepare_data(self) -> None:
        ensure_dataset(self.card, progress=True)

    def _decoder(self, *, train: bool) -> SampleDecoder:
        d = self.cfg.data
        return SampleDecoder(
            image_size=d.image_size,
            image_key=self.card.image_key,
            label_key="cls" if self.card.format == "folder" else self.label,
            mean=d.mean,
            std=d.std,
            augment=d.augment if train else "none",
            seed=self.cfg.run.seed,
        )

    def train_batches(self, start_batch: int) -> Iterable[dict[str, Any]]:
        split = self.cfg.data.train_split
        if self.card.format == "folder":
            source: dict[str, Any] = {"items": folder_samples(self.card.folder(split))}
            num_samples = len(source["items"])
        else:
            source, num_samples = {"urls": self.card.shard_urls(split)}, self.card.split(split).num_samples
        self.warn_small_split(self.card.name, split, num_samples)
        return self.train_loader(source, decode=self._decoder(train=True), collate=collate, start_batch=start_batch)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        logits = model(batch["image"])  # (B, num_classes)
        loss = F.cross_entropy(logits.float(), batch["label"], label_smoothing=self.cfg.task.label_smoothing)
        logs = {"loss": loss.detach(), "acc": (logits.argmax(-1) == batch["label"]).float().mean()}
        aux = getattr(getattr(model, "module", model), "aux_loss", None)  # MoE load balancing; DDP wraps in .module
        if isinstance(aux, Tensor) and aux.requires_grad:
            loss = loss + self.cfg.task.aux_loss_weight * aux
            logs["aux_loss"] = aux.detach()
        return loss, logs

    def evaluate(self, model: nn.Module, *, step: int = 0) -> tuple[dict[str, float], SkipStats]:
        d = self.cfg.data
        if d.eval_split is None:
            return {}, SkipStats()
        rank, world = self.rank_world()
        stream = eval_stream(
            self.card,
            d.eval_split,
            decoder=self._decoder(train=False),
            batch_size=d.eval_batch_size,
            rank=rank,
            world_size=world,
        )
        loader = make_loader(stream, num_workers=min(d.num_workers, 2))
        return evaluate_classifier(model, loader, num_classes=len(self.classes), acc=self.acc)
