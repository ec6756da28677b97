"""Image classification: any registered image model, labels from a dataset card."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from multimodal.config import ConfigError
from multimodal.data import SkipStats, collate, make_loader
from multimodal.evaluation import eval_stream, evaluate_classifier

from ..config import TrainConfig
from ..task_options import ClassificationOptions
from .base import Task

__all__ = ["ClassificationOptions", "ClassificationTask"]


class ClassificationTask(Task):
    """Cross-entropy on ``data.label`` of the card; top-1/top-5/mean per-class recall on ``data.eval_split``."""

    Options = ClassificationOptions

    def __init__(self, cfg: TrainConfig, acc=None) -> None:
        super().__init__(cfg, acc)
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

    def _label_key(self) -> str:
        return "cls" if self.card.format == "folder" else self.label

    def train_batches(self, model: nn.Module, start_batch: int) -> Iterable[dict[str, Any]]:
        source = self.train_source()
        decode = self.decoder(self.card, train=True, label=self._label_key())
        return self.train_loader(source, decode=decode, collate=collate, start_batch=start_batch)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        logits = model(batch["image"])  # (B, num_classes)
        loss = F.cross_entropy(logits.float(), batch["label"], label_smoothing=self.opts.label_smoothing)
        logs = {"loss": loss.detach(), "acc": (logits.argmax(-1) == batch["label"]).float().mean()}
        aux = getattr(self.unwrap(model), "aux_loss", None)  # mixture-of-experts load balancing
        if isinstance(aux, Tensor) and aux.requires_grad:
            loss = loss + self.opts.aux_loss_weight * aux
            logs["aux_loss"] = aux.detach()
        return loss, logs

    def evaluate(self, model: nn.Module, *, step: int = 0) -> tuple[dict[str, float], SkipStats]:
        d = self.cfg.data
        if d.eval_split is None:
            return {}, SkipStats()
        rank, world = self.rank_world()
        decoder = self.decoder(self.card, train=False, label=self._label_key())
        stream = eval_stream(
            self.card, d.eval_split, decoder=decoder, batch_size=d.eval_batch_size, rank=rank, world_size=world
        )
        loader = make_loader(stream, num_workers=min(d.num_workers, 2))
        return evaluate_classifier(model, loader, num_classes=len(self.classes), acc=self.acc)
