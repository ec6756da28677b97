"""Data: dataset cards, deterministic resumable streams over shards and folders, decoding, generators."""

from .cards import DatasetCard, SplitSpec, data_root, ensure_dataset, load_card
from .stream import DecodeError, SampleStream, SkipStats, folder_samples, make_loader
from .transforms import ImageTransform, SampleDecoder, collate, to_rgb

__all__ = [
    "DatasetCard",
    "DecodeError",
    "ImageTransform",
    "SampleDecoder",
    "SampleStream",
    "SkipStats",
    "SplitSpec",
    "collate",
    "data_root",
    "ensure_dataset",
    "folder_samples",
    "load_card",
    "make_loader",
    "to_rgb",
]
