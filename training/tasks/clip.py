"""Contrastive image-text pre-training (CLIP or SigLIP loss), evaluated zero-shot on every rank."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from multimodal.config import ConfigError
from multimodal.data import SkipStats
from multimodal.evaluation import zeroshot_evaluate
from multimodal.losses import ClipLoss, SigLipLoss, cached_contrastive_backward, split_batch
from multimodal.runs import get_tokenizer
from multimodal.tokenizers import ClipTokenizer

from ..config import TrainConfig
from ..task_options import ClipOptions
from .base import Task, collate_captions

__all__ = ["ClipOptions", "ClipTask"]


class ClipTask(Task):
    """CLIP on (image, caption) pairs of a card; zero-shot top-1/top-5 on ``task.zeroshot_splits``.

    Recipe settings the dataset cannot serve (random captions without a ``captions_key``, zero-shot splits or a
    label it lacks) are adapted with one warning each, and :meth:`resolve` records what was done, so a recipe made
    for shapes trains on any image-text shards.
    """

    Options = ClipOptions

    def __init__(self, cfg: TrainConfig, acc=None) -> None:
        super().__init__(cfg, acc)
        if self.card.format == "folder":
            raise ConfigError(
                f"CLIP needs captions, and {self.card.name!r} is an image folder without any; set data.dataset to "
                "WebDataset shards of image-text pairs or a card of them (see datasets/README.md)"
            )
        self.card.split(cfg.data.train_split, key="data.train_split")
        self.caption_sampling = cfg.data.caption_sampling
        if self.caption_sampling == "random" and self.card.captions_key is None:
            self.caption_sampling = "fixed"
            self.warn(
                f"dataset {self.card.name!r} has no alternative captions (captions_key), so "
                f"data.caption_sampling=random trains on each sample's .{self.card.text_key} caption; set "
                "data.caption_sampling=fixed to silence this"
            )
        self.label, self.splits = self._zeroshot_plan()
        rank, world = self.rank_world()
        self.loss_fn = (ClipLoss if self.opts.loss == "clip" else SigLipLoss)(rank=rank, world_size=world)
        self._tokenizer: ClipTokenizer | None = None

    def _zeroshot_plan(self) -> tuple[str | None, list[str]]:
        """The label and the splits to zero-shot classify: those the recipe asks for that the card has."""
        d, card = self.cfg.data, self.card
        label = d.label or next(iter(card.labels), None)
        if self.opts.zeroshot_splits:
            asked, keys = list(self.opts.zeroshot_splits), "task.zeroshot_splits, data.eval_split"
            silence = "task.zeroshot_splits=[] data.eval_split=null"
        else:
            asked, keys, silence = [d.eval_split] if d.eval_split else [], "data.eval_split", "data.eval_split=null"
        if not asked:
            return label, []
        present = [s for s in asked if s in card.splits]
        if not card.labels or not present:
            kept = label if label in card.labels else None
            self.warn(
                f"dataset {card.name!r} has no split {' or '.join(map(repr, asked))} with labels, so there is no "
                f"zero-shot evaluation during training ({keys}{', data.label' if label != kept else ''}); set "
                f"{silence} to silence this"
            )
            return kept, []
        if label not in card.labels:
            first = next(iter(card.labels))
            self.warn(
                f"dataset {card.name!r} has no label {label!r}, so zero-shot evaluation uses its label {first!r} "
                f"(data.label); set data.label={first} to silence this"
            )
            label = first
        if len(present) < len(asked):
            missing = " or ".join(repr(s) for s in asked if s not in present)
            self.warn(
                f"dataset {card.name!r} has no split {missing}, so zero-shot evaluation during training covers "
                f"{', '.join(map(repr, present))} only (task.zeroshot_splits); set "
                f"task.zeroshot_splits=[{','.join(present)}] to silence this"
            )
        return label, present

    def resolve(self) -> TrainConfig:
        """The recipe as it will run: the label, the caption sampling and the zero-shot splits the card allows."""
        zeroshot = tuple(self.splits) if self.opts.zeroshot_splits else ()
        data = {"label": self.label, "caption_sampling": self.caption_sampling}
        if not self.splits:
            data["eval_split"] = None
        return self.cfg.replace(task={"zeroshot_splits": zeroshot}, data=data)

    def build_model(self) -> nn.Module:
        model = super().build_model()
        size = model.cfg.vision.img_size
        if size != self.cfg.data.image_size:
            raise ValueError(
                f"data.image_size={self.cfg.data.image_size} but the image tower takes {size}x{size}; "
                f"set data.image_size={size} or model.args.vision.img_size"
            )
        return model

    def tokenizer(self, model: nn.Module) -> ClipTokenizer:
        """The tokenizer of ``model``'s text tower (its context length); made once."""
        if self._tokenizer is None:
            self._tokenizer = get_tokenizer(self.unwrap(model))
        return self._tokenizer

    def train_batches(self, model: nn.Module, start_batch: int) -> Iterable[dict[str, Any]]:
        source = self.train_source()
        return self.train_loader(
            source,
            decode=self.decoder(self.card, train=True, text=True),
            collate=partial(collate_captions, tokenizer=self.tokenizer(model)),
            start_batch=start_batch,
        )

    def _contrastive(self, out: dict[str, Tensor]) -> Tensor:
        args = [out["image_features"], out["text_features"], out["logit_scale"]]
        if self.opts.loss == "siglip":
            args.append(out["logit_bias"])
        return self.loss_fn(*args)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        out = model(batch["image"], batch["tokens"])
        loss = self._contrastive(out)
        return loss, {"loss": loss.detach(), "logit_scale": out["logit_scale"].detach()}

    def step(self, acc, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        chunks = self.opts.grad_cache_chunks
        if chunks <= 1:
            return super().step(acc, model, batch)
        inner = self.unwrap(model)
        # The logit scale's gradient comes from the loss on cached features, outside any forward pass, which
        # DDP's reducer cannot see: so every chunk runs without DDP sync and the gradients are averaged here.
        with acc.no_sync(model):
            pairs = {"image": batch["image"], "tokens": batch["tokens"]}
            encode, loss_fn = partial(_encode, model), partial(self._loss_on_features, inner)
            loss = cached_contrastive_backward(encode, split_batch(pairs, chunks), loss_fn)
        if acc.num_processes > 1:
            _average_gradients(list(inner.parameters()), acc.num_processes)
        return {"loss": loss, "logit_scale": inner.logit_scale.exp().detach()}

    def _loss_on_features(self, inner: nn.Module, image_features: Tensor, text_features: Tensor) -> Tensor:
        out = {"image_features": image_features, "text_features": text_features}
        out["logit_scale"] = inner.logit_scale.exp()
        if getattr(inner, "logit_bias", None) is not None:
            out["logit_bias"] = inner.logit_bias
        return self._contrastive(out)

    def after_step(self, model: nn.Module) -> None:
        model.clamp_logit_scale_()

    def evaluate(self, model: nn.Module, *, step: int = 0) -> tuple[dict[str, float], SkipStats]:
        if not self.splits:
            return {}, SkipStats()
        inner = self.unwrap(model)
        results = zeroshot_evaluate(
            inner, self.tokenizer(inner), self.card, splits=self.splits, label=self.label,
            decoder=self.decoder(self.card, train=False, label=self.label), acc=self.acc,
            batch_size=self.cfg.data.eval_batch_size, num_workers=min(self.cfg.data.num_workers, 1),
        )  # fmt: skip
        flat = {}
        for split, metrics in results.items():
            for key in ("top1", "top5", "mean_per_class_recall", "chance_top1"):
                if key in metrics:
                    flat[f"{split}_{key}"] = metrics[key]
        return flat, SkipStats()


def _encode(model: nn.Module, chunk: dict[str, Any]) -> tuple[Tensor, Tensor]:
    out = model(chunk["image"], chunk["tokens"])
    return out["image_features"], out["text_features"]


def _average_gradients(params: list[nn.Parameter], world_size: int) -> None:
    """All-reduce the mean of every gradient in one flat buffer (missing gradients count as zeros)."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p))
        offset += n
