"""Decoding raw samples into tensors: images of any PIL mode to normalised RGB, captions, labels."""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .stream import DecodeError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "SampleDecoder",
    "collate",
    "to_rgb",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_KEYS = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: wide grey rescaled, palette expanded, alpha composited on white.

    Integer grey (``I;16*``, ``I``) is read on the 16-bit scale, 65535 white, as PIL decodes 16-bit PNG, TIFF and
    PGM files; float grey (``F``) on 0..1. Values past that scale (32-bit data) rescale by their maximum instead.
    """
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        hi = max(float(arr.max()), 1.0 if img.mode == "F" else 65535.0)
        img = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB") if img.mode != "RGB" else img


@dataclass(frozen=True)
class SampleDecoder:
    """Turns a raw sample (shard members or a folder file) into ``{"image", "label"?, "text"?, "key"}``.

    ``label_key`` names a field of the sample's ``.json`` (or ``cls`` for image folders); ``text_key`` the
    caption member. With ``captions_key`` (a list field of the ``.json``) the caption is instead one of the
    image's alternative captions, drawn anew each epoch, as CLIP recipes do with COCO's five captions per image.
    Augmentation and caption draws come from generators seeded by (seed, epoch, key), so they are reproducible
    and survive resumption.
    """

    image_size: int
    label_key: str | None = None
    text_key: str | None = None
    captions_key: str | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    augment: Literal["none", "flip", "crop_flip"] = "none"
    seed: int = 0

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"key": sample.get("__key__", "")}
        draw = f"{self.seed}-{sample.get('__epoch__', 0)}-{out['key']}"  # what seeds this sample's random choices
        out["image"] = self._image(sample, random.Random(draw) if self.augment != "none" else None)
        if self.label_key is not None:
            out["label"] = self._label(sample)
        if self.captions_key is not None:
            out["text"] = self._random_caption(sample, random.Random(f"{draw}-caption"))
        elif self.text_key is not None:
            out["text"] = self._text(sample)
        return out

    def _image(self, sample: dict[str, Any], rng: random.Random | None) -> torch.Tensor:
        if "__path__" in sample:
            try:
                with open(sample["__path__"], "rb") as f:
                    data = f.read()
            except OSError as e:
                raise DecodeError("unreadable image file", str(e)) from None
        else:
            data = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
            if data is None:
                raise DecodeError("missing image")
        if not data:
            raise DecodeError("empty image")
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                img = to_rgb(im)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # the warning, under -W error
            raise DecodeError("image too large", str(e)) from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
            raise DecodeError("corrupt image", str(e)) from None
        img = self._geometry(img, rng)
        x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std

    def _geometry(self, img: Image.Image, rng: random.Random | None) -> Image.Image:
        size = self.image_size
        w, h = img.size
        if self.augment == "crop_flip" and rng is not None:  # random-resized crop, scale (0.35, 1), ratio 3/4..4/3
            for _ in range(10):
                area = w * h * rng.uniform(0.35, 1.0)
                ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
                cw, ch = round((area * ratio) ** 0.5), round((area / ratio) ** 0.5)
                if 0 < cw <= w and 0 < ch <= h:
                    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
                    img = img.crop((x0, y0, x0 + cw, y0 + ch))
                    break
            img = img.resize((size, size), Image.BICUBIC)
        else:  # shorter side to `size`, centre crop
            side = min(w, h)
            if max(w, h) > 4 * side:  # a sliver (say 1 x 100,000 px): crop its centre square before resizing
                left, top = (w - side) // 2, (h - side) // 2
                img, w, h = img.crop((left, top, left + side, top + side)), side, side
            scale = size / side
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            if (nw, nh) != (w, h):
                img = img.resize((nw, nh), Image.BICUBIC)
            left, top = (nw - size) // 2, (nh - size) // 2
            if (nw, nh) != (size, size):
                img = img.crop((left, top, left + size, top + size))
        if self.augment in ("flip", "crop_flip") and rng is not None and rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return img

    def _label(self, sample: dict[str, Any]) -> int:
        if "cls" in sample and isinstance(sample["cls"], int):
            return sample["cls"]
        meta = sample.get("json")
        if meta is None:
            raise DecodeError("missing label")
        try:
            meta = json.loads(meta) if isinstance(meta, (bytes, str)) else meta
            value = meta[self.label_key]
        except (ValueError, KeyError, TypeError):
            raise DecodeError("missing label") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise DecodeError("missing label", f"{self.label_key}={value!r} is not an integer class index")
        return value

    def _text(self, sample: dict[str, Any]) -> str:
        raw = sample.get(self.text_key)
        if raw is None:
            raise DecodeError("missing caption")
        return _clean_caption(raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw))

    def _random_caption(self, sample: dict[str, Any], rng: random.Random) -> str:
        try:
            meta = sample["json"]
            meta = json.loads(meta) if isinstance(meta, (bytes, str)) else meta
            captions = meta[self.captions_key]
        except (ValueError, KeyError, TypeError):
            raise DecodeError("missing caption", f"no {self.captions_key!r} list in the sample's .json") from None
        if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
            raise DecodeError("missing caption", f"{self.captions_key!r} is not a non-empty list of strings")
        return _clean_caption(rng.choice(captions))


def _clean_caption(text: str) -> str:
    text = " ".join(text.split())
    if not text:
        raise DecodeError("empty caption")
    return text


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images and labels; keep captions and keys as lists."""
    batch: dict[str, Any] = {"image": torch.stack([s["image"] for s in samples]), "key": [s["key"] for s in samples]}
    if "label" in samples[0]:
        batch["label"] = torch.tensor([s["label"] for s in samples], dtype=torch.long)
    if "text" in samples[0]:
        batch["text"] = [s["text"] for s in samples]
    return batch
