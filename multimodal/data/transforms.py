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

from .constants import IMAGE_KEYS, IMAGENET_MEAN, IMAGENET_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from .stream import DecodeError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "ImageTransform",
    "SampleDecoder",
    "check_images",
    "collate",
    "distort_rts",
    "normalize_image",
    "resize_center_crop",
    "to_rgb",
]

# The RTS distortion of Jaderberg et al. 2015 (their 28 px MNIST digits on a 42 px canvas): rotated by up to 45
# degrees either way, scaled by 0.7 to 1.2, placed anywhere on a canvas 1.5 times the image's side.
RTS_MAX_DEGREES = 45.0
RTS_SCALE = (0.7, 1.2)
RTS_CANVAS = 1.5
MAX_ASPECT = 64  # resize_center_crop cuts out the centre of an image longer than this many times its width


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

    ``image_key`` names the image member (``jpg``; ``jpg;png``: the first present), ``label_key`` a field of the
    sample's ``.json`` (or ``cls`` for image folders), ``text_key`` the caption member. With ``captions_key`` (a
    list field of the ``.json``) the caption is instead one of the image's alternative captions, drawn anew each
    epoch, as CLIP recipes do with COCO's five captions per image.
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
    image_key: str | None = None  # the image member ("jpg"), or alternatives "jpg;png"; None: the first of IMAGE_KEYS
    # rts: :func:`distort_rts` instead of the crop; drawn anew each epoch, or with ``fixed_distortion`` the same for
    # a sample every time (a test set: seeded by its key alone, whatever ``seed``)
    distort: Literal["none", "rts"] = "none"
    fixed_distortion: bool = False

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"key": sample.get("__key__", "")}
        draw = f"{self.seed}-{sample.get('__epoch__', 0)}-{out['key']}"  # what seeds this sample's random choices
        distortion = f"rts-{out['key']}" if self.fixed_distortion else f"{draw}-rts"  # what seeds the distortion
        out["image"] = self._image(sample, random.Random(draw) if self.augment != "none" else None, distortion)
        if self.label_key is not None:
            out["label"] = self._label(sample)
        if self.captions_key is not None:
            out["text"] = self._random_caption(sample, random.Random(f"{draw}-caption"))
        elif self.text_key is not None:
            out["text"] = self._text(sample)
        return out

    def _image(self, sample: dict[str, Any], rng: random.Random | None, distortion: str) -> torch.Tensor:
        if "__path__" in sample:
            try:
                with open(sample["__path__"], "rb") as f:
                    data = f.read()
            except OSError as e:
                raise DecodeError("unreadable image file", str(e)) from None
        else:
            keys = self.image_key.lower().split(";") if self.image_key else IMAGE_KEYS
            data = next((sample[k] for k in keys if k in sample), None)
            if data is None:
                raise DecodeError("missing image", f"no .{' or .'.join(keys)} member" if self.image_key else "")
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
        return normalize_image(self._geometry(img, rng, distortion), self.mean, self.std)

    def _geometry(self, img: Image.Image, rng: random.Random | None, distortion: str) -> Image.Image:
        size = self.image_size
        w, h = img.size
        if self.distort == "rts":
            img = distort_rts(img, size, random.Random(distortion))
        elif self.augment == "crop_flip" and rng is not None:  # random-resized crop, scale (0.35, 1), ratio 3/4..4/3
            for _ in range(10):
                area = w * h * rng.uniform(0.35, 1.0)
                ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
                cw, ch = round((area * ratio) ** 0.5), round((area / ratio) ** 0.5)
                if 0 < cw <= w and 0 < ch <= h:
                    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
                    img = img.crop((x0, y0, x0 + cw, y0 + ch))
                    break
            img = img.resize((size, size), Image.BICUBIC)
        else:
            img = resize_center_crop(img, size)
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


def distort_rts(img: Image.Image, size: int, rng: random.Random) -> Image.Image:
    """The image (centre square) rotated, scaled and translated on a ``size`` x ``size`` canvas, as Jaderberg et al.'s
    RTS data: its side ``size / RTS_CANVAS`` times a scale drawn from ``RTS_SCALE``, turned by up to
    ``RTS_MAX_DEGREES`` either way, pasted anywhere it fits (or, turned past the canvas, anywhere it covers it); the
    canvas is the median colour of the image's border, so the background continues (ink touching the border
    does not tint it)."""
    rgb = np.asarray(img.convert("RGB"))
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    fill = tuple(int(v) for v in np.median(border, axis=0).round())
    side = max(2, round(size / RTS_CANVAS * rng.uniform(*RTS_SCALE)))
    content = resize_center_crop(img.convert("RGB"), side).convert("RGBA")
    content = content.rotate(rng.uniform(-RTS_MAX_DEGREES, RTS_MAX_DEGREES), Image.BILINEAR, expand=True)
    w, h = content.size
    x = rng.randint(min(0, size - w), max(0, size - w))
    y = rng.randint(min(0, size - h), max(0, size - h))
    canvas = Image.new("RGB", (size, size), fill)
    canvas.paste(content, (x, y), content)  # the alpha of the turned corners keeps the canvas there
    return canvas


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (bicubic), then the centre ``size`` x ``size`` square: the evaluation geometry, pixel
    for pixel torchvision's ``Resize(size, BICUBIC)`` then ``CenterCrop(size)`` (open_clip's and timm's evaluation
    preprocessing), whose rounding it copies: the longer side truncated, the crop's offset rounded half to even.
    Only an image more than :data:`MAX_ASPECT` times longer than wide (or wide than long) differs: its centre part of
    that aspect is cut out first, so a sliver never becomes a huge intermediate image."""
    w, h = img.size
    short, long = min(w, h), max(w, h)
    if long > MAX_ASPECT * short:
        keep = MAX_ASPECT * short
        x0, y0 = ((w - keep) // 2, 0) if w > h else (0, (h - keep) // 2)
        img = img.crop((x0, y0, x0 + min(w, keep), y0 + min(h, keep)))
        w, h = img.size
        short, long = min(w, h), max(w, h)
    new_long = int(size * long / short)
    nw, nh = (size, new_long) if w <= h else (new_long, size)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    if (nw, nh) != (size, size):
        left, top = round((nw - size) / 2), round((nh - size) / 2)  # half to even, as torchvision
        img = img.crop((left, top, left + size, top + size))
    return img


def normalize_image(img: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """An RGB image to a (3, H, W) float tensor: pixels / 255, then (x - mean) / std per channel."""
    x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


@dataclass(frozen=True)
class ImageTransform:
    """A run's evaluation-time preprocessing, as open_clip's ``preprocess``: a PIL image of any mode -> a (3,
    image_size, image_size) float tensor, exactly what :class:`SampleDecoder` (``augment="none"``) makes of it.

    ``multimodal.load_model_and_transforms(run)`` returns one built from the run's ``data`` section.
    """

    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))  # a YAML list reads back as a tuple
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or not all(s > 0 for s in self.std):
            raise ValueError(f"mean and std need 3 values each, std > 0; got mean={self.mean}, std={self.std}")

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """(3, image_size, image_size): RGB, shorter side to image_size (bicubic), centre crop, normalised."""
        if not isinstance(img, Image.Image):
            raise ValueError(
                f"the transform takes a PIL image (PIL.Image.open(path)), got {type(img).__name__}; "
                "give it the image itself, not a tensor or array"
            )
        return normalize_image(resize_center_crop(to_rgb(img), self.image_size), self.mean, self.std)


def check_images(images: torch.Tensor, image_size: int | None = None, *, who: str = "the model") -> None:
    """Raise a one-sentence ValueError, naming ``who`` and what to do, unless ``images`` is a float batch (B, 3, S, S)
    with S = ``image_size`` (any size when None): what :class:`ImageTransform` makes, stacked."""
    side = "S" if image_size is None else image_size
    expected = f"a float batch of shape (B, 3, {side}, {side})"
    fix = "pass images through the transform from multimodal.load_model_and_transforms and stack them"
    if not isinstance(images, torch.Tensor):
        got = f"a {type(images).__name__}"
    elif not images.is_floating_point():
        got = f"a {images.dtype} tensor of shape {tuple(images.shape)} (raw pixels?)"
    elif images.ndim == 3 and images.shape[0] == 3:
        got, fix = f"one image of shape {tuple(images.shape)}", "add a batch dimension: image.unsqueeze(0)"
    elif images.ndim != 4 or images.shape[1] != 3:
        got = f"a tensor of shape {tuple(images.shape)}"
    elif image_size is not None and tuple(images.shape[2:]) != (image_size, image_size):
        got = f"{images.shape[2]}x{images.shape[3]} images, shape {tuple(images.shape)}"
    else:
        return
    raise ValueError(f"{who} takes {expected}, got {got}; {fix}")
