"""unCLIP (DALL-E 2) stages: the diffusion prior, the decoder and the upsampler, each trained on its own.

The prior and the decoder read a frozen CLIP (``task.clip``, a CLIP run directory): its image embeddings of the
training split are computed once and cached in that run (:mod:`multimodal.data.embeddings`), the caption's text
embedding and per-token encodings come from its text tower under ``no_grad``. The upsampler needs no CLIP.

Each wrapper's ``forward`` is its training loss, so a DDP/FSDP-wrapped model is called, not unwrapped, in training.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.utils import save_image

from multimodal import load_checkpoint
from multimodal.checkpoint import read_run_config
from multimodal.data import SampleDecoder, SkipStats, collate, ensure_dataset
from multimodal.data.embeddings import ClipEmbeddings, cached_clip_embeddings

from ..config import TrainConfig
from .base import Task

__all__ = ["DecoderTask", "PriorTask", "UpsamplerTask"]

UNIT_RANGE = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}  # images in [-1, 1], as diffusion models take them


def _collate_tokens(samples: list[dict[str, Any]], tokenizer: Any) -> dict[str, Any]:
    batch = collate(samples)
    batch["tokens"] = tokenizer(batch["text"])  # (B, L)
    return batch


class _ClipConditioned(Task):
    """What the prior and decoder share: the frozen CLIP of ``task.clip`` and its cached embeddings."""

    def __init__(self, cfg: TrainConfig, acc=None) -> None:
        super().__init__(cfg, acc)
        if not cfg.task.clip:
            raise ValueError(
                f"task {cfg.task.name} needs task.clip=RUN, the directory of a trained CLIP run "
                "(e.g. runs/clip-shapes from configs/clip/shapes.yaml)"
            )
        if not (Path(cfg.task.clip) / "config.yaml").is_file():
            raise ValueError(
                f"task.clip={cfg.task.clip!r} is not a CLIP run directory (no config.yaml); train the CLIP first "
                "(configs/clip/shapes.yaml for the shapes recipes) or point task.clip at its run"
            )
        read_run_config(cfg.task.clip, task="clip")  # a run of another family is a clear error here
        self.card = self.load_card()
        if self.card.format == "folder":
            raise ValueError(f"unCLIP needs captions; {self.card.name} is an image folder without any")
        self._clip: nn.Module | None = None
        self._clip_data: dict[str, Any] | None = None
        self._embeddings: dict[str, ClipEmbeddings] = {}

    @property
    def clip(self) -> nn.Module:
        if self._clip is None:
            device = self.acc.device if self.acc is not None else "cpu"
            self._clip = load_checkpoint(self.cfg.task.clip, device=device).requires_grad_(False)
        return self._clip

    def embeddings(self, split: str) -> ClipEmbeddings:
        if split not in self._embeddings:
            self._embeddings[split] = cached_clip_embeddings(self.cfg.task.clip, self.card, split, progress=True)
        return self._embeddings[split]

    def prepare_data(self) -> None:
        ensure_dataset(self.card, progress=True)
        for split in filter(None, (self.cfg.data.train_split, self.cfg.data.eval_split)):
            self.embeddings(split)

    def check_clip_shapes(self, model: nn.Module) -> None:
        """The model's embedding and text widths must be the CLIP's."""
        clip = self.clip
        want = {"embed_dim": clip.cfg.embed_dim, "text_width": clip.cfg.text.width}
        have = {k: model.config[k] for k in want}
        if have != want:
            args = " ".join(f"model.args.{k}={v}" for k, v in want.items())
            raise ValueError(f"{self.cfg.model.name} is built for {have} but the CLIP of task.clip has {want}: {args}")

    @torch.no_grad()
    def encode_text(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Text embeddings (B, E), per-token encodings (B, L, W) and padding (B, L) from the frozen text tower."""
        with torch.autocast(tokens.device.type, enabled=False):
            return self.clip.encode_text_tokens(tokens)

    def eval_rows(self) -> tuple[ClipEmbeddings, Tensor]:
        """The first ``task.eval_samples`` rows of the evaluation split (the same rows on every evaluation)."""
        cache = self.embeddings(self.cfg.data.eval_split)
        return cache, torch.arange(min(self.cfg.task.eval_samples, len(cache)))


class PriorTask(_ClipConditioned):
    """The diffusion prior on cached (caption, CLIP image embedding) pairs; no image is decoded."""

    def build_model(self) -> nn.Module:
        model = super().build_model()
        self.check_clip_shapes(model)
        if model.config.text_context < self.clip.cfg.text.context_length:
            raise ValueError(
                f"the prior reads {model.config.text_context} text tokens but the CLIP's context is "
                f"{self.clip.cfg.text.context_length}: set model.args.text_context={self.clip.cfg.text.context_length}"
            )
        return model

    def train_batches(self, start_batch: int) -> Iterator[dict[str, Any]]:
        """Epochs of a seeded permutation of the cached rows, this rank's share; captions drawn per batch."""
        cache = self.embeddings(self.cfg.data.train_split)
        rank, world = self.rank_world()
        B, seed = self.cfg.data.batch_size, self.cfg.run.seed
        per_epoch = len(cache) // (B * world)
        if per_epoch == 0:
            raise ValueError(f"{len(cache)} cached samples make no batch of {B} x {world} processes")
        batch = start_batch
        while True:
            epoch, index = divmod(batch, per_epoch)
            order = torch.randperm(len(cache), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
            start = (index * world + rank) * B
            rows = order[start : start + B]
            draw = torch.Generator().manual_seed((seed * 1_000_003 + batch) * 64 + rank)
            yield {
                "rows": rows,
                "tokens": cache.captions(rows, generator=draw),
                "key": [cache.keys[i] for i in rows.tolist()],
                "size": B,
                "skipped": [],
            }
            batch += 1

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        cache = self.embeddings(self.cfg.data.train_split)
        image = cache.image_embeds[batch["rows"].cpu()].to(batch["tokens"].device)
        text, enc, pad = self.encode_text(batch["tokens"])
        loss, logs = model(image, text, enc, pad)
        return loss, {"loss": loss.detach(), **logs}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, *, step: int = 0) -> tuple[dict[str, float], SkipStats]:
        """Sample image embeddings for the evaluation captions (each sample's first caption) and compare them with
        the true ones: cosine to its own image, to another sample's image (shuffled baseline) and to its text."""
        if not self.cfg.data.eval_split:
            return {}, SkipStats()
        inner = self.acc.unwrap_model(model) if self.acc is not None else model
        cache, rows = self.eval_rows()
        device = next(inner.parameters()).device
        text, enc, pad = self.encode_text(cache.tokens[rows, 0].to(device))
        was_training = inner.training
        inner.eval()
        sampled = inner.sample(
            text, enc, pad, guidance_scale=self.cfg.task.guidance_scale,
            num_inference_steps=self.cfg.task.sample_steps, generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        inner.train(was_training)
        true = cache.image_embeds[rows].to(device)
        cos = (sampled * true).sum(-1)
        shuffled = (sampled * true.roll(1, dims=0)).sum(-1)
        # retrieval: is the sample closer to its own image than to every other evaluation image?
        top1 = (sampled @ true.T).argmax(dim=1) == torch.arange(len(rows), device=device)
        return {
            "cos_image": cos.mean().item(),
            "cos_image_shuffled": shuffled.mean().item(),
            "cos_text": (sampled * text).sum(-1).mean().item(),
            "retrieval_top1": top1.float().mean().item(),
        }, SkipStats()


class DecoderTask(_ClipConditioned):
    """The decoder on (image, CLIP image embedding, caption) triples; the embedding comes from the cache."""

    def build_model(self) -> nn.Module:
        model = super().build_model()
        self.check_clip_shapes(model)
        if model.config.image_size != self.cfg.data.image_size:
            raise ValueError(
                f"data.image_size={self.cfg.data.image_size} but the decoder makes {model.config.image_size} px "
                f"images: set data.image_size={model.config.image_size}"
            )
        return model

    def train_batches(self, start_batch: int) -> Iterator[dict[str, Any]]:
        from multimodal.tokenizers import ClipTokenizer

        d = self.cfg.data
        random_captions = d.caption_sampling == "random" and self.card.captions_key is not None
        decoder = SampleDecoder(
            image_size=d.image_size, image_key=self.card.image_key, text_key=self.card.text_key,
            seed=self.cfg.run.seed, captions_key=self.card.captions_key if random_captions else None, **UNIT_RANGE,
        )  # fmt: skip
        tokenizer = ClipTokenizer(context_length=self.clip.cfg.text.context_length)
        return self.train_loader(
            {"urls": self.card.shard_urls(d.train_split)},
            decode=decoder,
            collate=partial(_collate_tokens, tokenizer=tokenizer),
            start_batch=start_batch,
        )

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        cache = self.embeddings(self.cfg.data.train_split)
        images = batch["image"]
        embeds = cache.image_embeds[cache.rows(batch["key"])].to(images.device)
        _, enc, pad = self.encode_text(batch["tokens"])
        loss, logs = model(images, embeds, enc, pad)
        return loss, {"loss": loss.detach(), **logs}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, *, step: int = 0) -> tuple[dict[str, float], SkipStats]:
        """Decode the evaluation images' own CLIP embeddings (with their first caption), save the grid under
        ``samples/``, and report how well CLIP recognises the result: the cosine of the sample's CLIP embedding to
        the embedding it was decoded from, against another sample's (shuffled baseline)."""
        if not self.cfg.data.eval_split:
            return {}, SkipStats()
        inner = self.acc.unwrap_model(model) if self.acc is not None else model
        cache, rows = self.eval_rows()
        device = next(inner.parameters()).device
        target = cache.image_embeds[rows].to(device)
        _, enc, pad = self.encode_text(cache.tokens[rows, 0].to(device))
        was_training = inner.training
        inner.eval()
        images = inner.sample(
            target, enc, pad, guidance_scale=self.cfg.task.guidance_scale,
            num_inference_steps=self.cfg.task.sample_steps, generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        inner.train(was_training)
        got = self.clip_image_embeds(images)
        if self.acc is None or self.acc.is_main_process:
            out = self.cfg.run_dir / "samples" / f"step-{step:08d}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            save_image(images[:64] * 0.5 + 0.5, out, nrow=8)
        return {
            "clip_cos": (got * target).sum(-1).mean().item(),
            "clip_cos_shuffled": (got * target.roll(1, dims=0)).sum(-1).mean().item(),
        }, SkipStats()

    def clip_image_embeds(self, images: Tensor) -> Tensor:
        """CLIP image embeddings (B, E) of images in [-1, 1], preprocessed as the CLIP run was."""
        from multimodal.checkpoint import read_run_config
        from multimodal.pipelines.unclip import clip_image_embeddings

        if self._clip_data is None:  # the CLIP run's preprocessing, read once
            self._clip_data = read_run_config(self.cfg.task.clip).get("data", {})
        return clip_image_embeddings(self.clip, images, mean=self._clip_data["mean"], std=self._clip_data["std"])


class UpsamplerTask(Task):
    """The upsampler on the card's images alone: the low-resolution inputs are made from them."""

    def __init__(self, cfg: TrainConfig, acc=None) -> None:
        super().__init__(cfg, acc)
        self.card = self.load_card()

    def prepare_data(self) -> None:
        ensure_dataset(self.card, progress=True)

    def build_model(self) -> nn.Module:
        model = super().build_model()
        if model.config.image_size != self.cfg.data.image_size:
            raise ValueError(
                f"data.image_size={self.cfg.data.image_size} but the upsampler makes {model.config.image_size} px "
                f"images: set data.image_size={model.config.image_size}"
            )
        return model

    def _decoder(self) -> SampleDecoder:
        return SampleDecoder(
            image_size=self.cfg.data.image_size, image_key=self.card.image_key, seed=self.cfg.run.seed, **UNIT_RANGE
        )

    def _source(self, split: str) -> dict[str, Any]:
        if self.card.format == "folder":
            from multimodal.data import folder_samples

            return {"items": folder_samples(self.card.folder(split))}
        return {"urls": self.card.shard_urls(split)}

    def train_batches(self, start_batch: int) -> Iterator[dict[str, Any]]:
        return self.train_loader(
            self._source(self.cfg.data.train_split), decode=self._decoder(), collate=collate, start_batch=start_batch
        )

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        loss, logs = model(batch["image"])
        return loss, {"loss": loss.detach(), **logs}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, *, step: int = 0) -> tuple[dict[str, float], SkipStats]:
        """Upsample downsampled evaluation images; PSNR against the originals, beside bicubic interpolation's."""
        if not self.cfg.data.eval_split:
            return {}, SkipStats()
        from multimodal.data import SampleStream

        inner = self.acc.unwrap_model(model) if self.acc is not None else model
        stream = SampleStream(
            **self._source(self.cfg.data.eval_split), decode=self._decoder(), collate=collate,
            batch_size=self.cfg.task.eval_samples, infinite=False, shuffle_buffer=0,
        )  # fmt: skip
        batch = next((b for b in stream if b["size"]), None)
        if batch is None:
            raise ValueError(f"no decodable image in the '{self.cfg.data.eval_split}' split to evaluate on")
        device = next(inner.parameters()).device
        high = batch["image"].to(device)
        low = F.avg_pool2d(high, inner.config.scale)
        was_training = inner.training
        inner.eval()
        up = inner.sample(low, num_inference_steps=self.cfg.task.sample_steps,
                          generator=torch.Generator().manual_seed(0))  # fmt: skip
        inner.train(was_training)
        bicubic = F.interpolate(low, size=high.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)
        if self.acc is None or self.acc.is_main_process:
            out = self.cfg.run_dir / "samples" / f"step-{step:08d}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            grid = torch.cat([bicubic[:16], up[:16], high[:16]])
            save_image(grid * 0.5 + 0.5, out, nrow=16)
        return {"psnr": _psnr(up, high), "psnr_bicubic": _psnr(bicubic, high)}, SkipStats()


def _psnr(x: Tensor, y: Tensor) -> float:
    """Mean PSNR (dB) of images in [-1, 1] (peak-to-peak 2)."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(dim=1).clamp_min(1e-10)
    return (10 * torch.log10(4.0 / mse)).mean().item()
