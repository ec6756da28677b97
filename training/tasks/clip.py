"""Contrastive image-text pre-training (CLIP or SigLIP loss), evaluated zero-shot on every rank."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from eval.zeroshot import zeroshot_evaluate
from multimodal.data import SampleDecoder, SkipStats, collate, ensure_dataset, load_card
from multimodal.losses import ClipLoss, SigLipLoss, cached_contrastive_backward, split_batch

from ..config import TrainConfig
from .base import Task

__all__ = ["ClipTask"]


def _collate_tokens(samples: list[dict[str, Any]], tokenizer) -> dict[str, Any]:
    batch = collate(samples)
    batch["tokens"] = tokenizer(batch["text"])  # (B, context_length), tokenized in the loader workers
    return batch


class ClipTask(Task):
    """CLIP on (image, caption) pairs of a card; zero-shot top-1/top-5 on ``task.zeroshot_splits``."""

    def __init__(self, cfg: TrainConfig, acc=None) -> None:
        super().__init__(cfg, acc)
        self.card = load_card(cfg.data.dataset)
        if self.card.format == "folder":
            raise ValueError(f"CLIP needs captions; {self.card.name} is an image folder without any")
        if cfg.data.caption_sampling == "random" and self.card.captions_key is None:
            raise ValueError(
                f"data.caption_sampling=random draws from the card's alternative captions, but dataset "
                f"{self.card.name!r} declares no captions_key; set data.caption_sampling=fixed or add captions_key"
            )
        self.label = cfg.data.label or next(iter(self.card.labels), None)
        self.splits = list(cfg.task.zeroshot_splits) or ([cfg.data.eval_split] if cfg.data.eval_split else [])
        for split in [cfg.data.train_split, *self.splits]:
            self.card.split(split)
        if self.splits and self.label is None:
            raise ValueError(
                f"dataset {self.card.name!r} has no labels to zero-shot classify; set data.eval_split=null"
            )
        self._tokenizer = None
        self._loss: nn.Module | None = None

    def resolve(self) -> TrainConfig:
        return self.cfg.replace(data={"label": self.label})

    def prepare_data(self) -> None:
        ensure_dataset(self.card, progress=True)

    def build_model(self) -> nn.Module:
        model = super().build_model()
        size = model.cfg.vision.img_size
        if size != self.cfg.data.image_size:
            raise ValueError(
                f"data.image_size={self.cfg.data.image_size} but the image tower takes {size}x{size}; "
                f"set data.image_size={size} or model.args.vision.img_size"
            )
        self._context_length = model.cfg.text.context_length
        return model

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from multimodal.tokenizers import ClipTokenizer

            self._tokenizer = ClipTokenizer(context_length=self._context_length)
        return self._tokenizer

    def _decoder(self, *, train: bool, label: str | None = None) -> SampleDecoder:
        d = self.cfg.data
        return SampleDecoder(
            image_size=d.image_size,
            text_key=self.card.text_key if train else None,
            captions_key=self.card.captions_key if train and d.caption_sampling == "random" else None,
            label_key=label,
            mean=d.mean,
            std=d.std,
            augment=d.augment if train else "none",
            seed=self.cfg.run.seed,
        )

    def train_batches(self, start_batch: int) -> Iterable[dict[str, Any]]:
        return self.train_loader(
            {"urls": self.card.shard_urls(self.cfg.data.train_split)},
            decode=self._decoder(train=True),
            collate=partial(_collate_tokens, tokenizer=self.tokenizer),
            start_batch=start_batch,
        )

    @property
    def loss_fn(self) -> nn.Module:
        if self._loss is None:
            rank, world = self.rank_world()
            kind = ClipLoss if self.cfg.task.loss == "clip" else SigLipLoss
            self._loss = kind(rank=rank, world_size=world)
        return self._loss

    def _contrastive(self, out: dict[str, Tensor]) -> Tensor:
        args = [out["image_features"], out["text_features"], out["logit_scale"]]
        if self.cfg.task.loss == "siglip":
            args.append(out["logit_bias"])
        return self.loss_fn(*args)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        out = model(batch["image"], batch["tokens"])
        loss = self._contrastive(out)
        return loss, {"loss": loss.detach(), "logit_scale": out["logit_scale"].detach()}

    def step(self, acc, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        chunks = self.cfg.task.grad_cache_chunks
        if chunks <= 1:
            return super().step(acc, model, batch)
        inner = acc.unwrap_model(model)

        def encode(chunk: dict[str, Any]) -> tuple[Tensor, Tensor]:
            out = model(chunk["image"], chunk["tokens"])
            return out["image_features"], out["text_features"]

        def loss_fn(image_features: Tensor, text_features: Tensor) -> Tensor:
            out = {"image_features": image_features, "text_features": text_features}
            out["logit_scale"] = inner.logit_scale.exp()
            if getattr(inner, "logit_bias", None) is not None:
                out["logit_bias"] = inner.logit_bias
            return self._contrastive(out)

        # The logit scale's gradient comes from the loss on cached features, outside any forward pass, which
        # DDP's reducer cannot see: so every chunk runs without DDP sync and the gradients are averaged here.
        with acc.no_sync(model):
            pairs = {"image": batch["image"], "tokens": batch["tokens"]}
            loss = cached_contrastive_backward(encode, split_batch(pairs, chunks), loss_fn)
        if acc.num_processes > 1:
            _average_gradients(list(inner.parameters()), acc.num_processes)
        return {"loss": loss, "logit_scale": inner.logit_scale.exp().detach()}

    def after_step(self, model: nn.Module) -> None:
        model.clamp_logit_scale_()

    def evaluate(self, model: nn.Module, *, step: int = 0) -> tuple[dict[str, float], SkipStats]:
        if not self.splits:
            return {}, SkipStats()
        inner = self.acc.unwrap_model(model) if self.acc is not None else model
        results = zeroshot_evaluate(
            inner, self.tokenizer, self.card, splits=self.splits, label=self.label,
            decoder=self._decoder(train=False, label=self.label), acc=self.acc,
            batch_size=self.cfg.data.eval_batch_size, num_workers=min(self.cfg.data.num_workers, 1),
        )  # fmt: skip
        flat = {}
        for split, metrics in results.items():
            for key in ("top1", "top5", "mean_per_class_recall", "chance_top1"):
                if key in metrics:
                    flat[f"{split}_{key}"] = metrics[key]
        return flat, SkipStats()


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
