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

from multimodal import load_checkpoint
from multimodal.data import SampleStream, SkipStats, collate
from multimodal.data.embeddings import ClipEmbeddings
from multimodal.pipelines.unclip import clip_image_embeddings
from multimodal.runs import cached_clip_embeddings, get_tokenizer, read_run_config

from ..config import TrainConfig
from ..task_options import DecoderOptions, PriorOptions, UpsamplerOptions
from .base import UNIT_RANGE, Task, collate_captions

__all__ = ["DecoderOptions", "DecoderTask", "PriorOptions", "PriorTask", "UpsamplerOptions", "UpsamplerTask"]


class _ClipConditioned(Task):
    """What the prior and decoder share: the frozen CLIP of ``task.clip`` and its cached embeddings."""

    def __init__(self, cfg: TrainConfig, acc=None) -> None:
        super().__init__(cfg, acc)
        if not self.opts.clip:
            raise ValueError(
                f"task {self.opts.name} needs task.clip=RUN, the directory of a trained CLIP run "
                "(e.g. runs/clip-shapes from configs/clip/shapes.yaml)"
            )
        if not (Path(self.opts.clip) / "config.yaml").is_file():
            raise ValueError(
                f"task.clip={self.opts.clip!r} is not a CLIP run directory (no config.yaml); train the CLIP first "
                "(configs/clip/shapes.yaml for the shapes recipes) or point task.clip at its run"
            )
        self.clip_data = read_run_config(self.opts.clip, task="clip").get("data", {})  # another family: an error
        if self.card.format == "folder":
            raise ValueError(f"unCLIP needs captions; {self.card.name} is an image folder without any")
        self._clip: nn.Module | None = None
        self._embeddings: dict[str, ClipEmbeddings] = {}

    @property
    def clip(self) -> nn.Module:
        if self._clip is None:
            device = self.acc.device if self.acc is not None else "cpu"
            self._clip = load_checkpoint(self.opts.clip, device=device).requires_grad_(False)
        return self._clip

    def embeddings(self, split: str) -> ClipEmbeddings:
        if split not in self._embeddings:
            self._embeddings[split] = cached_clip_embeddings(self.opts.clip, self.card, split, progress=True)
        return self._embeddings[split]

    def prepare_data(self) -> None:
        super().prepare_data()
        for split in filter(None, (self.cfg.data.train_split, self.cfg.data.eval_split)):
            self.embeddings(split)

    def build_model(self) -> nn.Module:
        """The model, its embedding and text widths checked against the CLIP's."""
        model = super().build_model()
        want = {"embed_dim": self.clip.cfg.embed_dim, "text_width": self.clip.cfg.text.width}
        have = {k: model.config[k] for k in want}
        if have != want:
            args = " ".join(f"model.args.{k}={v}" for k, v in want.items())
            raise ValueError(f"{self.cfg.model.name} is built for {have} but the CLIP of task.clip has {want}: {args}")
        return model

    @torch.no_grad()
    def encode_text(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Text embeddings (B, E), per-token encodings (B, L, W) and padding (B, L) from the frozen text tower."""
        with torch.autocast(tokens.device.type, enabled=False):
            return self.clip.encode_text_tokens(tokens)

    def eval_rows(self, model: nn.Module) -> tuple[nn.Module, Tensor, tuple[Tensor, Tensor, Tensor]]:
        """The unwrapped model, the CLIP image embeddings of the first ``task.eval_samples`` rows of the
        evaluation split (the same rows on every evaluation) and their first captions' text encodings, on the
        model's device."""
        inner = self.unwrap(model)
        device = next(inner.parameters()).device
        cache = self.embeddings(self.cfg.data.eval_split)
        rows = torch.arange(min(self.opts.eval_samples, len(cache)))
        return inner, cache.image_embeds[rows].to(device), self.encode_text(cache.tokens[rows, 0].to(device))

    def sample(self, model: nn.Module, condition: Tensor, text: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        """Evaluation samples of the prior or decoder ``model`` (unwrapped) for a condition and caption encodings:
        ``task.sample_steps`` DPM-Solver++ steps, ``task.guidance_scale``, seed 0."""
        _, enc, pad = text
        with self.evaluation_mode(model):
            return model.sample(
                condition, enc, pad, guidance_scale=self.opts.guidance_scale,
                num_inference_steps=self.opts.sample_steps, generator=torch.Generator().manual_seed(0),
            )  # fmt: skip


class PriorTask(_ClipConditioned):
    """The diffusion prior on cached (caption, CLIP image embedding) pairs; no image is decoded."""

    Options = PriorOptions

    def build_model(self) -> nn.Module:
        model = super().build_model()
        if model.config.text_context < self.clip.cfg.text.context_length:
            raise ValueError(
                f"the prior reads {model.config.text_context} text tokens but the CLIP's context is "
                f"{self.clip.cfg.text.context_length}: set model.args.text_context={self.clip.cfg.text.context_length}"
            )
        return model

    def train_batches(self, model: nn.Module, start_batch: int) -> Iterator[dict[str, Any]]:
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
        return _wrapper_loss(model, image, *self.encode_text(batch["tokens"]))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, *, step: int = 0) -> tuple[dict[str, float], SkipStats]:
        """Sample image embeddings for the evaluation captions (each sample's first caption) and compare them with
        the true ones: cosine to its own image, to another sample's image (shuffled baseline) and to its text."""
        if not self.cfg.data.eval_split:
            return {}, SkipStats()
        inner, true, text = self.eval_rows(model)
        sampled = self.sample(inner, text[0], text)
        # retrieval: is the sample closer to its own image than to every other evaluation image?
        top1 = (sampled @ true.T).argmax(dim=1) == torch.arange(len(true), device=true.device)
        return {
            "cos_image": (sampled * true).sum(-1).mean().item(),
            "cos_image_shuffled": (sampled * true.roll(1, dims=0)).sum(-1).mean().item(),
            "cos_text": (sampled * text[0]).sum(-1).mean().item(),
            "retrieval_top1": top1.float().mean().item(),
        }, SkipStats()


class _MakesImages(Task):
    """A task whose model makes images of one size (``model.config.image_size``), which the data must have."""

    def build_model(self) -> nn.Module:
        model = super().build_model()
        made, asked = model.config.image_size, self.cfg.data.image_size
        if made != asked:
            raise ValueError(
                f"data.image_size={asked} but the {self.opts.name} model makes {made} px images: "
                f"set data.image_size={made}"
            )
        return model


class DecoderTask(_MakesImages, _ClipConditioned):
    """The decoder on (image, CLIP image embedding, caption) triples; the embedding comes from the cache."""

    Options = DecoderOptions

    def train_batches(self, model: nn.Module, start_batch: int) -> Iterator[dict[str, Any]]:
        tokenizer = get_tokenizer(self.clip)
        source = self.train_source()
        return self.train_loader(
            source,
            decode=self.decoder(self.card, train=True, text=True, normalise=UNIT_RANGE),
            collate=partial(collate_captions, tokenizer=tokenizer),
            start_batch=start_batch,
        )

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        cache = self.embeddings(self.cfg.data.train_split)
        images = batch["image"]
        embeds = cache.image_embeds[cache.rows(batch["key"])].to(images.device)
        _, enc, pad = self.encode_text(batch["tokens"])
        return _wrapper_loss(model, images, embeds, enc, pad)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, *, step: int = 0) -> tuple[dict[str, float], SkipStats]:
        """Decode the evaluation images' own CLIP embeddings (with their first caption), save the grid under
        ``samples/``, and report how well CLIP recognises the result: the cosine of the sample's CLIP embedding to
        the embedding it was decoded from, against another sample's (shuffled baseline)."""
        if not self.cfg.data.eval_split:
            return {}, SkipStats()
        inner, target, text = self.eval_rows(model)
        images = self.sample(inner, target, text)
        got = clip_image_embeddings(self.clip, images, mean=self.clip_data["mean"], std=self.clip_data["std"])
        self.save_samples(images[:64], step, nrow=8)
        return {
            "clip_cos": (got * target).sum(-1).mean().item(),
            "clip_cos_shuffled": (got * target.roll(1, dims=0)).sum(-1).mean().item(),
        }, SkipStats()


class UpsamplerTask(_MakesImages, Task):
    """The upsampler on the card's images alone: the low-resolution inputs are made from them."""

    Options = UpsamplerOptions

    def train_batches(self, model: nn.Module, start_batch: int) -> Iterator[dict[str, Any]]:
        source = self.train_source()
        decode = self.decoder(self.card, train=True, normalise=UNIT_RANGE)
        return self.train_loader(source, decode=decode, collate=collate, start_batch=start_batch)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        return _wrapper_loss(model, batch["image"])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, *, step: int = 0) -> tuple[dict[str, float], SkipStats]:
        """Upsample downsampled evaluation images; PSNR against the originals, beside bicubic interpolation's."""
        split = self.cfg.data.eval_split
        if not split:
            return {}, SkipStats()
        source, _ = self.source(self.card, split)
        stream = SampleStream(
            **source, decode=self.decoder(self.card, train=False, normalise=UNIT_RANGE), collate=collate,
            batch_size=self.opts.eval_samples, infinite=False, shuffle_buffer=0,
        )  # fmt: skip
        batch = next((b for b in stream if b["size"]), None)
        if batch is None:
            raise ValueError(f"no decodable image in the '{split}' split to evaluate on")
        inner = self.unwrap(model)
        high = batch["image"].to(next(inner.parameters()).device)
        low = F.avg_pool2d(high, inner.config.scale)
        with self.evaluation_mode(inner):
            up = inner.sample(
                low, num_inference_steps=self.opts.sample_steps, generator=torch.Generator().manual_seed(0)
            )
        bicubic = F.interpolate(low, size=high.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)
        self.save_samples(torch.cat([bicubic[:16], up[:16], high[:16]]), step, nrow=16)
        return {"psnr": _psnr(up, high), "psnr_bicubic": _psnr(bicubic, high)}, SkipStats()


def _wrapper_loss(model: nn.Module, *inputs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """A diffusion wrapper's forward is its training loss (so DDP sees the forward): the loss and its logs."""
    loss, logs = model(*inputs)
    return loss, {"loss": loss.detach(), **logs}


def _psnr(x: Tensor, y: Tensor) -> float:
    """Mean PSNR (dB) of images in [-1, 1] (peak-to-peak 2)."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(dim=1).clamp_min(1e-10)
    return (10 * torch.log10(4.0 / mse)).mean().item()
