"""CLIP image embeddings and caption tokens of a dataset split, computed once with a frozen CLIP and cached.

The unCLIP prior trains on these alone (no image is decoded), and the decoder looks its conditioning up by sample
key. A cache records the fingerprint of the weights it came from: a CLIP trained further (or replaced) invalidates
it, and it is rebuilt. Where it lives (in the CLIP run) is for :func:`multimodal.runs.cached_clip_embeddings`,
which opens the run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..io import atomic_save_safetensors
from .cards import DatasetCard
from .stream import SampleStream
from .transforms import SampleDecoder, collate

__all__ = ["ClipEmbeddings", "compute_clip_embeddings", "load_cache", "save_cache", "weights_fingerprint"]

CACHE_VERSION = 1


@dataclass
class ClipEmbeddings:
    """Row i describes sample ``keys[i]``: its unit-norm CLIP image embedding and up to K caption token rows.

    ``tokens`` (N, K, L) holds the captions' CLIP token ids; rows past ``num_captions[i]`` are all zero.
    """

    keys: list[str]
    image_embeds: Tensor  # (N, E) float32, unit norm
    tokens: Tensor  # (N, K, L) int64
    num_captions: Tensor  # (N,) int64, >= 1

    def __post_init__(self) -> None:
        self._rows = {key: i for i, key in enumerate(self.keys)}
        if len(self._rows) != len(self.keys):
            raise ValueError("duplicate sample keys: the split's samples must have unique keys")

    def __len__(self) -> int:
        return len(self.keys)

    def rows(self, keys: list[str]) -> Tensor:
        """Row indices (B,) of sample keys; a key the cache does not hold is an error naming it."""
        try:
            return torch.tensor([self._rows[k] for k in keys], dtype=torch.long)
        except KeyError as e:
            raise KeyError(
                f"sample {e.args[0]!r} has no cached CLIP embedding: the cache was built from another version of "
                "the dataset; delete the cache file to rebuild it"
            ) from None

    def captions(self, rows: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One caption's tokens (B, L) per row, drawn uniformly among that sample's captions."""
        counts = self.num_captions[rows]
        pick = (torch.rand(len(rows), generator=generator) * counts).long()  # (B,) in [0, count)
        return self.tokens[rows, pick]

    def save(self, path: Path, metadata: dict[str, str]) -> None:
        """Write atomically (a temporary file renamed into place)."""
        tensors = {"image_embeds": self.image_embeds, "tokens": self.tokens, "num_captions": self.num_captions}
        atomic_save_safetensors(tensors, path, metadata={**metadata, "keys": json.dumps(self.keys)})

    @classmethod
    def load(cls, path: Path) -> tuple[ClipEmbeddings, dict[str, str]]:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in ("image_embeds", "tokens", "num_captions")}
        keys = json.loads(meta.pop("keys"))
        return cls(keys=keys, **tensors), meta


def weights_fingerprint(path: Path) -> str:
    """SHA-256 of a weights file (what a cache was computed from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _all_captions(sample: dict[str, Any], card: DatasetCard, decoder: SampleDecoder) -> list[str]:
    if card.captions_key is not None:
        meta = sample.get("json")
        meta = json.loads(meta) if isinstance(meta, (bytes, str)) else (meta or {})
        captions = meta.get(card.captions_key)
        if isinstance(captions, list) and captions and all(isinstance(c, str) and c.strip() for c in captions):
            return [" ".join(c.split()) for c in captions]
    return [decoder(sample)["text"]]


@torch.no_grad()
def compute_clip_embeddings(
    clip: nn.Module,
    card: DatasetCard,
    split: str,
    *,
    image_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    tokenizer: Any,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> ClipEmbeddings:
    """Embed every image of ``split`` (in shard order) with ``clip.encode_image`` and tokenize all its captions."""
    decoder = SampleDecoder(
        image_size=image_size, image_key=card.image_key, text_key=card.text_key, mean=mean, std=std
    )

    def decode(sample: dict[str, Any]) -> dict[str, Any]:
        out = decoder(sample)
        out["captions"] = _all_captions(sample, card, decoder)
        return out

    def collate_captions(samples: list[dict[str, Any]]) -> dict[str, Any]:
        return {**collate(samples), "captions": [s["captions"] for s in samples]}

    stream = SampleStream(
        urls=card.shard_urls(split), decode=decode, collate=collate_captions, batch_size=batch_size, infinite=False,
        shuffle_buffer=0,
    )  # fmt: skip
    keys: list[str] = []
    embeds: list[Tensor] = []
    captions: list[list[str]] = []
    total = card.split(split).num_samples
    for batch in tqdm(stream, desc=f"CLIP embeddings {card.name}:{split}", total=-(-total // batch_size),
                      disable=not progress, leave=False):  # fmt: skip
        if not batch["size"]:
            continue
        embeds.append(clip.encode_image(batch["image"].to(device), normalize=True).float().cpu())
        keys.extend(batch["key"])
        captions.extend(batch["captions"])
    if not keys:
        raise ValueError(f"{card.name}:{split} has no readable samples to embed")
    K = max(len(c) for c in captions)
    L = tokenizer.context_length
    tokens = torch.zeros(len(keys), K, L, dtype=torch.long)
    for i, caps in enumerate(captions):
        tokens[i, : len(caps)] = tokenizer(caps)
    num = torch.tensor([len(c) for c in captions], dtype=torch.long)
    return ClipEmbeddings(keys=keys, image_embeds=torch.cat(embeds), tokens=tokens, num_captions=num)


def load_cache(path: Path, fingerprint: str) -> ClipEmbeddings | None:
    """The embeddings cached at ``path`` when they came from weights of ``fingerprint`` (:func:`weights_fingerprint`)
    in this cache version; None when there is no such file or it is stale."""
    if not path.is_file():
        return None
    cached, meta = ClipEmbeddings.load(path)
    if meta.get("weights_sha256") == fingerprint and meta.get("version") == str(CACHE_VERSION):
        return cached
    return None


def save_cache(embeddings: ClipEmbeddings, path: Path, *, fingerprint: str, dataset: str, split: str) -> None:
    """Cache ``embeddings`` of ``dataset``'s ``split`` at ``path``, recording the fingerprint of the weights they
    came from, so that :func:`load_cache` refuses them once those weights change."""
    meta = {"weights_sha256": fingerprint, "version": str(CACHE_VERSION), "dataset": dataset, "split": split}
    embeddings.save(path, meta)
