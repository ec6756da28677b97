"""The data constants recipes and command lines need before anything heavy is imported (no torch here)."""

from __future__ import annotations

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_KEYS", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "STOP_SIGNALS"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_KEYS = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff")  # WebDataset members decoded as the image
STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2")  # what a scheduler sends to stop a job; the trainer handles them
