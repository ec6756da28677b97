"""Data: dataset cards, deterministic resumable streams over shards and folders, decoding, generators.

The names below are imported on first use (see ``multimodal/_lazy.py``), so a generator's ``--help`` needs no torch.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

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
_EXPORTS = {
    "DatasetCard": ".cards",
    "DecodeError": ".stream",
    "ImageTransform": ".transforms",
    "SampleDecoder": ".transforms",
    "SampleStream": ".stream",
    "SkipStats": ".stream",
    "SplitSpec": ".cards",
    "collate": ".transforms",
    "data_root": ".cards",
    "ensure_dataset": ".cards",
    "folder_samples": ".stream",
    "load_card": ".cards",
    "make_loader": ".stream",
    "to_rgb": ".transforms",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .cards import DatasetCard, SplitSpec, data_root, ensure_dataset, load_card
    from .stream import DecodeError, SampleStream, SkipStats, folder_samples, make_loader
    from .transforms import ImageTransform, SampleDecoder, collate, to_rgb
