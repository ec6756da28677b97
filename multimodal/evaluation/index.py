"""An embedding index over a collection of images, as clip-retrieval builds one: the CLIP image embeddings of every
image, computed in chunks so that a killed build resumes after its last finished chunk, then a faiss index and the
images' metadata (key, caption, label, path), queried by text, by image or by raw vectors::

    index = EmbeddingIndex.load("runs/index-shapes")
    hits = index.query_text(["a red circle"], k=5)[0]      # [Hit(rank=1, score=0.31, key="000123", ...), ...]

Search is exact by default (``IndexFlatIP``: inner products of unit CLIP embeddings, i.e. cosine similarity); for
collections too large to scan, approximate: IVF-flat (``nlist`` k-means cells, ``nprobe`` of them searched) or HNSW
(``m`` links a node, ``ef_search`` candidates a query). An index folder holds ``index.json`` (what built it, how;
written last, so its presence means finished), ``index.faiss`` and ``items.json`` (the metadata, one column per
field, row i for vector i); while a build runs, ``build.json`` (what it started with) and ``chunks/NNNNNN.safetensors``
(batch n of the collection's raw samples: its unit embeddings and metadata, written atomically).

This module opens no run folder (:mod:`multimodal.runs` does): what it needs of the CLIP that builds an index, its
registered name and arguments, weights file and their SHA-256, and image preprocessing, comes as a
:class:`ClipRecord`, which the index records and rebuilds the model from when a query first needs it.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor
from tqdm.auto import tqdm

from ..data import DatasetCard, SampleDecoder, SampleStream, SkipStats, ensure_dataset, folder_samples, load_card
from ..data.embeddings import weights_fingerprint
from ..data.stream import make_loader
from ..data.transforms import ImageTransform
from ..io import atomic_path, atomic_save_safetensors, atomic_write_json
from ..models.clip import CLIP
from ..models.registry import create_model
from ..tokenizers import ClipTokenizer

__all__ = [
    "IMAGE_SUFFIXES",
    "BuildResult",
    "ClipRecord",
    "Collection",
    "EmbeddingIndex",
    "Hit",
    "IndexBuilder",
    "IndexSpec",
    "build_faiss_index",
    "image_folder",
    "open_collection",
]

VERSION = 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")  # what an image folder contributes, searched recursively
INDEX_JSON = "index.json"  # what built the index and how; written last: a finished build
INDEX_FILE, ITEMS_JSON = "index.faiss", "items.json"
BUILD_JSON, CHUNKS = "build.json", "chunks"  # while a build runs: what it started with, its finished batches
FIELDS = ("key", "caption", "label", "path")  # the metadata of an item, the columns of items.json
MIN_POINTS_PER_CELL = 39  # faiss's k-means wants this many training vectors a centroid (it warns below)
Kind = Literal["exact", "ivf", "hnsw"]


def _faiss() -> Any:
    """The faiss module (imported on first use: it takes a while), computing on as many threads as PyTorch."""
    try:
        import faiss
    except ModuleNotFoundError:
        raise ModuleNotFoundError("the embedding index needs faiss: pip install faiss-cpu") from None
    faiss.omp_set_num_threads(torch.get_num_threads())
    return faiss


# -- the faiss index ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IndexSpec:
    """Which faiss index to build over N unit vectors, and how it searches.

    ``exact``: ``IndexFlatIP``, every vector scored. ``ivf``: ``IndexIVFFlat``, ``nlist`` k-means cells (default
    4 sqrt(N), at most N / 39), ``nprobe`` of them searched a query (default nlist / 16, at least 8). ``hnsw``:
    ``IndexHNSWFlat``, ``m`` links a node, ``ef_construction`` and ``ef_search`` candidates kept while building and
    searching. More cells searched (``nprobe``) or candidates kept (``ef_search``): higher recall, slower queries.
    """

    kind: Kind = "exact"
    nlist: int | None = None
    nprobe: int | None = None
    m: int = 32
    ef_construction: int = 80
    ef_search: int = 128

    def __post_init__(self) -> None:
        if self.kind not in ("exact", "ivf", "hnsw"):
            raise ValueError(f"index kind must be exact, ivf or hnsw, got {self.kind!r}")
        for name in ("nlist", "nprobe", "m", "ef_construction", "ef_search"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")

    def resolved(self, n: int) -> IndexSpec:
        """This spec for ``n`` vectors: the IVF defaults filled in, and an ``nlist`` that needs more training vectors
        than there are refused."""
        if self.kind != "ivf":
            return self
        nlist = self.nlist or max(1, min(round(4 * math.sqrt(n)), n // MIN_POINTS_PER_CELL))
        if nlist > n:
            raise ValueError(
                f"nlist {nlist} needs at least {nlist} vectors to train its cells, the collection has {n}: "
                "pass a smaller nlist (about 4 sqrt(N)) or the exact kind"
            )
        return replace(self, nlist=nlist, nprobe=min(nlist, self.nprobe or max(8, nlist // 16)))

    def describe(self) -> str:
        """One line for people: exact, ivf (nlist 1265, nprobe 79) or hnsw (m 32, ef_construction 80, ...)."""
        if self.kind == "ivf":
            return f"ivf (nlist {self.nlist}, nprobe {self.nprobe})"
        if self.kind == "hnsw":
            return f"hnsw (m {self.m}, ef_construction {self.ef_construction}, ef_search {self.ef_search})"
        return "exact"


def build_faiss_index(vectors: np.ndarray | Tensor, spec: IndexSpec) -> Any:
    """A faiss inner-product index of ``vectors`` (N, D), of the kind ``spec`` names (resolved for N vectors)."""
    faiss = _faiss()
    x = _as_float32(vectors)
    n, dim = x.shape
    spec = spec.resolved(n)
    if spec.kind == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, spec.nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.nprobe = spec.nprobe
    elif spec.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, spec.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.ef_construction
        index.hnsw.efSearch = spec.ef_search
    else:
        index = faiss.IndexFlatIP(dim)
    index.add(x)
    return index


def _as_float32(vectors: np.ndarray | Tensor) -> np.ndarray:
    """Vectors (N, D) as the C-contiguous float32 array faiss takes."""
    x = vectors.detach().float().cpu().numpy() if isinstance(vectors, Tensor) else np.asarray(vectors, np.float32)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"expected vectors of shape (N, D) with N >= 1, got shape {tuple(x.shape)}")
    return np.ascontiguousarray(x, dtype=np.float32)


# -- the CLIP that embeds -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipRecord:
    """The CLIP an index is built with: the run it came from (``checkpoint``, for the reader), its weights file and
    their SHA-256, its registered model name and arguments, and its evaluation-time image preprocessing."""

    checkpoint: str
    weights: str
    sha256: str
    model: str
    model_args: dict[str, Any]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def create(
        cls,
        checkpoint: str | Path,
        weights: str | Path,
        model: str,
        model_args: dict[str, Any],
        transform: ImageTransform,
    ) -> ClipRecord:
        """The record of the CLIP of run ``checkpoint`` whose weights are the file ``weights`` (hashed here)."""
        weights = Path(weights).resolve()
        return cls(
            checkpoint=str(Path(checkpoint).resolve()), weights=str(weights), sha256=weights_fingerprint(weights),
            model=model, model_args=dict(model_args), image_size=transform.image_size, mean=transform.mean,
            std=transform.std,
        )  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipRecord:
        return cls(**{**data, "mean": tuple(data["mean"]), "std": tuple(data["std"])})

    @property
    def transform(self) -> ImageTransform:
        """What a query image goes through: what the collection's images went through."""
        return ImageTransform(image_size=self.image_size, mean=self.mean, std=self.std)

    def load(self, device: str | torch.device = "cpu", *, check: bool = True) -> CLIP:
        """The CLIP (eval mode) on ``device``; with ``check``, its weights file is first checked against the SHA-256
        recorded, so an index is never queried with another model than the one that embedded its images."""
        weights = Path(self.weights)
        if not weights.is_file():
            raise FileNotFoundError(
                f"the CLIP weights this index was built with, {weights} (run {self.checkpoint}), are gone; "
                "restore them or rebuild the index with another CLIP run"
            )
        if check and weights_fingerprint(weights) != self.sha256:
            raise ValueError(
                f"{weights} changed since this index was built (its SHA-256 is no longer {self.sha256[:12]}...): "
                "the stored embeddings came from other weights; rebuild the index (eval.index build --force)"
            )
        with torch.random.fork_rng(devices=[]):  # the initialisation, overwritten next, leaves the caller's RNG
            model = create_model(self.model, **self.model_args)
        if not isinstance(model, CLIP):
            raise ValueError(f"model {self.model!r} is a {type(model).__name__}, not a CLIP; index with a CLIP run")
        model.load_state_dict(load_file(str(weights)))
        return model.to(device).eval()


# -- the collection -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Collection:
    """The images an index embeds, in a fixed order: WebDataset shards (``urls``) or the files of an image folder
    (``items``, raw samples with ``__key__`` and ``__path__``), with where captions and labels come from."""

    name: str
    source: str
    split: str | None = None
    urls: tuple[str, ...] | None = None
    items: tuple[dict[str, Any], ...] | None = None
    image_key: str | None = None
    text_key: str | None = None
    label_key: str | None = None
    label_names: tuple[str, ...] = ()
    num_items: int | None = None

    def identity(self) -> dict[str, Any]:
        """Its name, source, split and a SHA-256 of its shard or image-file paths: a resumed build must find the
        same split and SHA-256 (one file more or less, and every later batch would hold other images)."""
        names = list(self.urls) if self.urls is not None else [item["__path__"] for item in self.items or ()]
        digest = hashlib.sha256(json.dumps(names).encode()).hexdigest()
        return {"name": self.name, "source": self.source, "split": self.split, "sha256": digest}


def image_folder(root: str | Path) -> Collection:
    """Every image file (``IMAGE_SUFFIXES``, any case) under ``root``, recursively, hidden ones aside, in path
    order; an item's key is its path relative to ``root``."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    files = sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.is_file()
    )  # fmt: skip
    if not files:
        raise ValueError(
            f"{root} holds no images ({', '.join(s.lstrip('.') for s in IMAGE_SUFFIXES)}, searched recursively); "
            "pass a folder of images, WebDataset shards or a dataset card"
        )
    items = tuple(
        {"__key__": p.relative_to(root).as_posix(), "__path__": str(p), "__url__": str(p)} for p in files
    )  # __url__: the file, so that a skipped image is reported by name
    return Collection(name=root.name, source=str(root), items=items, num_items=len(items))


def open_collection(dataset: str | Path, split: str | None = None) -> Collection:
    """The collection ``dataset`` names: a dataset card (name or YAML path, as :func:`~multimodal.data.load_card`
    resolves it; generated data is built if missing), WebDataset shards (a folder of ``*.tar`` or of split
    subfolders of them, a brace pattern, one ``.tar``) or a folder of image files. ``split``: the card's or
    shards' split, by default ``test`` if there is one, else the only one; an image folder has none."""
    path = Path(str(dataset)).expanduser()
    if path.is_dir() and not (any(path.glob("*.tar")) or any(path.glob("*/*.tar"))):
        if split is not None:
            raise ValueError(f"{path} is an image folder, which has no splits; pass the subfolder to index instead")
        return image_folder(path)
    card = load_card(dataset)
    split = split or _default_split(card)
    card.split(split)  # an unknown split is an error that lists the card's
    ensure_dataset(card)
    label_key = next(iter(card.labels), None)
    common = {"name": card.name, "source": card.source, "split": split, "image_key": card.image_key}
    labels = {"label_key": label_key, "label_names": card.labels.get(label_key, ())}
    if card.format == "folder":
        items = tuple(folder_samples(card.folder(split)))
        if not items:
            raise ValueError(f"split {split!r} of {card.source} holds no images")
        return Collection(**common, **labels, items=items, num_items=len(items))
    return Collection(
        **common, **labels, urls=tuple(card.shard_urls(split)), text_key=card.text_key,
        num_items=card.split(split).num_samples,
    )  # fmt: skip


def _default_split(card: DatasetCard) -> str:
    """``test`` if the card has it, else its only split."""
    if "test" in card.splits:
        return "test"
    if len(card.splits) == 1:
        return next(iter(card.splits))
    raise ValueError(f"dataset {card.name!r} has splits {', '.join(card.splits)} and no test split; pick one")


@dataclass(frozen=True)
class _Decode:
    """A raw sample -> its preprocessed image and metadata; an unusable image raises DecodeError (the sample is
    skipped and counted), a missing caption or label is None."""

    decoder: SampleDecoder
    text_key: str | None
    label_key: str | None
    label_names: tuple[str, ...]

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = self.decoder(sample)  # {"key", "image"}
        raw = sample.get(self.text_key) if self.text_key else None
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        out["caption"] = (" ".join(text.split()) or None) if isinstance(text, str) else None
        out["label"] = self._label(sample)
        out["path"] = sample.get("__path__") or sample.get("__url__")
        return out

    def _label(self, sample: dict[str, Any]) -> str | None:
        if not self.label_names:
            return None
        value = sample.get("cls")
        if value is None and sample.get("json") is not None:
            try:
                meta = json.loads(sample["json"]) if isinstance(sample["json"], (bytes, str)) else sample["json"]
                value = meta.get(self.label_key)
            except (ValueError, AttributeError):
                return None
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(self.label_names)
        return self.label_names[value] if ok else None


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {"image": torch.stack([s["image"] for s in samples]), **{f: [s[f] for s in samples] for f in FIELDS}}


# -- building -------------------------------------------------------------------------------------------------------
@dataclass
class BuildResult:
    """What a build did: items in the index, embedded by this run and by the runs it resumed, images skipped."""

    count: int
    embedded: int
    resumed: int
    spec: IndexSpec
    skipped: SkipStats = field(default_factory=SkipStats)
    seconds: float = 0.0


class IndexBuilder:
    """A build of an index into folder ``out``: :meth:`open` starts one or finds the one started there (checking
    that it embeds the same collection with the same CLIP, in chunks of the same batch size), :meth:`run` embeds
    what is left and writes the index."""

    def __init__(self, out: Path, clip: ClipRecord, collection: Collection, batch_size: int) -> None:
        self.out, self.clip, self.collection, self.batch_size = out, clip, collection, batch_size

    @classmethod
    def open(
        cls, out: str | Path, clip: ClipRecord, collection: Collection, *, batch_size: int | None = None,
        force: bool = False,
    ) -> IndexBuilder:  # fmt: skip
        """The build of ``collection`` with ``clip`` into ``out``: a new one, or the unfinished one there (resumed);
        ``batch_size`` None: the resumed build's, else 256. A finished index there is refused unless ``force``,
        which removes it (and any unfinished build) first; a folder holding anything else is refused."""
        out = Path(out)
        if (out / INDEX_JSON).exists() and not force:
            raise FileExistsError(f"{out} holds a finished index; pass --force to rebuild it, or choose another --out")
        if force:
            for name in (INDEX_JSON, INDEX_FILE, ITEMS_JSON, BUILD_JSON):
                (out / name).unlink(missing_ok=True)
            shutil.rmtree(out / CHUNKS, ignore_errors=True)
        if (out / BUILD_JSON).is_file():
            started = json.loads((out / BUILD_JSON).read_text())
            batch_size = _check_resume(out, started, clip, collection, batch_size)
        elif out.exists() and (not out.is_dir() or any(not _leftover(p) for p in out.iterdir())):
            raise FileExistsError(f"{out} exists and holds no index being built; choose a new or empty --out folder")
        else:
            batch_size = batch_size or 256
            if batch_size < 1:
                raise ValueError(f"batch size must be >= 1, got {batch_size}")
            record = {"version": VERSION, "clip": asdict(clip), "dataset": collection.identity()}
            atomic_write_json(out / BUILD_JSON, {**record, "batch_size": batch_size})
        return cls(out, clip, collection, batch_size)

    def done_chunks(self) -> list[Path]:
        """The chunks already on disk, in order: those of batches 0, 1, ... up to the first one missing."""
        chunks = []
        while (path := self.out / CHUNKS / f"{len(chunks):06d}.safetensors").is_file():
            chunks.append(path)
        return chunks

    def done_items(self) -> int:
        """Images embedded in the chunks on disk."""
        return sum(_chunk_rows(path) for path in self.done_chunks())

    @torch.no_grad()
    def run(
        self, spec: IndexSpec = IndexSpec(), *, device: str | torch.device = "cpu", workers: int = 1,
        progress: bool = False,
    ) -> BuildResult:  # fmt: skip
        """Embed the batches past the chunks on disk (``workers``: 0 decodes images in this process, 1 in a
        background one; more would interleave batches differently from what resuming expects), then write the index
        of ``spec`` and the metadata, and remove the chunks."""
        if workers not in (0, 1):
            raise ValueError(f"workers must be 0 or 1 (one ordered stream of batches), got {workers}")
        start = time.perf_counter()
        done = self.done_chunks()
        first, resumed = len(done), sum(_chunk_rows(path) for path in done)
        model = self.clip.load(device, check=False)  # hashed by ClipRecord.create moments ago
        c = self.collection
        decoder = SampleDecoder(
            image_size=self.clip.image_size, image_key=c.image_key, mean=self.clip.mean, std=self.clip.std
        )
        stream = SampleStream(
            urls=list(c.urls) if c.urls is not None else None, items=list(c.items) if c.items is not None else None,
            decode=_Decode(decoder, c.text_key, c.label_key, c.label_names), collate=_collate,
            batch_size=self.batch_size, infinite=False, shuffle_buffer=0, start_batch=first,
        )  # fmt: skip
        total = -(-c.num_items // self.batch_size) if c.num_items else None
        batches = tqdm(
            make_loader(stream, num_workers=workers), desc=f"embedding {c.name}", total=total, initial=first,
            unit="batch", disable=not progress,
        )  # fmt: skip
        embedded = 0
        for n, batch in enumerate(batches, first):
            if batch["size"]:
                embeds = model.encode_image(batch["image"].to(device), normalize=True).float().cpu()  # (B, E)
            else:
                embeds = torch.zeros(0, model.cfg.embed_dim)
            meta = {f: batch.get(f, []) for f in FIELDS}
            atomic_save_safetensors(
                {"embeddings": embeds.contiguous()}, self.out / CHUNKS / f"{n:06d}.safetensors",
                metadata={"items": json.dumps(meta), "skipped": json.dumps(batch["skipped"])},
            )  # fmt: skip
            embedded += len(embeds)
        return self._finish(spec, embedded=embedded, resumed=resumed, seconds=time.perf_counter() - start)

    def _finish(self, spec: IndexSpec, *, embedded: int, resumed: int, seconds: float) -> BuildResult:
        """The index over every chunk, written with the metadata and ``index.json`` (last); the chunks removed."""
        embeds, items, skipped = [], {f: [] for f in FIELDS}, SkipStats()
        for path in self.done_chunks():
            with safe_open(str(path), framework="pt") as f:
                embeds.append(f.get_tensor("embeddings"))
                meta = f.metadata()
            for name, column in json.loads(meta["items"]).items():
                items[name] += column
            skipped.update(json.loads(meta["skipped"]))
        vectors = torch.cat(embeds) if embeds else torch.zeros(0)
        if not len(items["key"]):
            summary = skipped.summary() or "it yielded no samples"
            raise ValueError(f"no readable image in {self.collection.source}: {summary}".replace("\n", " "))
        spec = spec.resolved(len(vectors))
        index = build_faiss_index(vectors, spec)
        with atomic_path(self.out / INDEX_FILE) as tmp:
            _faiss().write_index(index, str(tmp))
        atomic_write_json(self.out / ITEMS_JSON, items, indent=None)
        result = BuildResult(
            count=len(vectors), embedded=embedded, resumed=resumed, spec=spec, skipped=skipped, seconds=seconds
        )
        atomic_write_json(
            self.out / INDEX_JSON,
            {
                "version": VERSION, "clip": asdict(self.clip), "dataset": self.collection.identity(),
                "batch_size": self.batch_size, "index": asdict(spec), "count": result.count,
                "dim": int(vectors.shape[1]), **skipped.to_json(),
            },
        )  # fmt: skip
        shutil.rmtree(self.out / CHUNKS, ignore_errors=True)
        (self.out / BUILD_JSON).unlink(missing_ok=True)
        return result


def _leftover(path: Path) -> bool:
    """A temporary file that a build killed while writing left (``multimodal.io``'s ``.<name>.tmp``)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def _chunk_rows(path: Path) -> int:
    with safe_open(str(path), framework="pt") as f:
        return f.get_slice("embeddings").get_shape()[0]


def _check_resume(
    out: Path, started: dict[str, Any], clip: ClipRecord, collection: Collection, batch_size: int | None
) -> int:
    """The batch size of the unfinished build in ``out`` that ``started`` records, once its CLIP, dataset and batch
    size are checked against this call's; a mismatch is a one-line ValueError."""
    if started.get("version") != VERSION:
        raise ValueError(f"{out} holds a build of another version of this tool; pass --force to start over")
    before = ClipRecord.from_dict(started["clip"])
    if before.sha256 != clip.sha256 or before.model != clip.model:
        raise ValueError(
            f"{out} was started with the CLIP of {before.checkpoint} (weights {before.sha256[:12]}...), not "
            f"{clip.checkpoint} ({clip.sha256[:12]}...): resume with the checkpoint it started with, or pass --force "
            "to start over"
        )
    was, now = started["dataset"], collection.identity()
    if (was["split"], was["sha256"]) != (now["split"], now["sha256"]):
        if (was["source"], was["split"]) == (now["source"], now["split"]):
            raise ValueError(
                f"the files of {now['source']} (split {now['split']}) changed since {out} was started, so its "
                "finished batches no longer line up with them: pass --force to start over"
            )
        raise ValueError(
            f"{out} was started on {was['source']} (split {was['split']}), not {now['source']} "
            f"(split {now['split']}): resume with the dataset it started with, or pass --force to start over"
        )
    if batch_size is not None and batch_size != started["batch_size"]:
        raise ValueError(
            f"{out} was started with batch size {started['batch_size']}, which fixes its chunks: resume with "
            f"--batch-size {started['batch_size']} (or without it), or pass --force to start over"
        )
    return int(started["batch_size"])


# -- querying -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hit:
    """One result: its rank (1 = best), score (cosine similarity for unit vectors) and the item's metadata: its key
    (a folder image's relative path, a shard sample's ``__key__``), caption and label where the dataset has them,
    and path (the image file, or the shard holding the sample)."""

    rank: int
    score: float
    key: str
    caption: str | None = None
    label: str | None = None
    path: str | None = None


class EmbeddingIndex:
    """A built index: faiss search over the collection's embeddings, by raw vectors (:meth:`search`), texts
    (:meth:`query_text`) or images (:meth:`query_image`); the CLIP that built it is loaded on the first text or
    image query, once (thread-safe)."""

    def __init__(self, index: Any, items: dict[str, list], info: dict[str, Any], *, device: str = "cpu") -> None:
        self.index, self.items, self.info, self.device = index, items, info, device
        self.clip = ClipRecord.from_dict(info["clip"])
        self._model: CLIP | None = None
        self._tokenizer: ClipTokenizer | None = None
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls, path: str | Path, *, device: str = "cpu", nprobe: int | None = None, ef_search: int | None = None
    ) -> EmbeddingIndex:
        """The finished index in folder ``path``; ``nprobe`` (ivf) or ``ef_search`` (hnsw) replace the search
        breadth it was built with."""
        path = Path(path)
        if not (path / INDEX_JSON).is_file():
            unfinished = (path / BUILD_JSON).is_file()
            raise FileNotFoundError(
                f"{path} holds an unfinished build; rerun eval.index build to finish it"
                if unfinished
                else f"{path} is not an embedding index (no {INDEX_JSON}); build one with python -m eval.index build"
            )
        info = json.loads((path / INDEX_JSON).read_text())
        index = _faiss().read_index(str(path / INDEX_FILE))
        kind = info["index"]["kind"]
        for name, value, applies in (("nprobe", nprobe, "ivf"), ("ef_search", ef_search, "hnsw")):
            if value is not None and kind != applies:
                raise ValueError(f"{name} applies to an {applies} index; {path} is {kind}")
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if nprobe is not None:
            index.nprobe = nprobe
            info["index"]["nprobe"] = nprobe
        if ef_search is not None:
            index.hnsw.efSearch = ef_search
            info["index"]["ef_search"] = ef_search
        return cls(index, json.loads((path / ITEMS_JSON).read_text()), info, device=device)

    def __len__(self) -> int:
        return self.index.ntotal

    @property
    def dim(self) -> int:
        return self.index.d

    def search(self, vectors: np.ndarray | Tensor, k: int = 10) -> list[list[Hit]]:
        """The ``k`` best items for each row of ``vectors`` (Q, D), best first; unit vectors, as CLIP's
        ``encode_*(normalize=True)`` gives, make the scores cosine similarities."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a whole number >= 1, got {k!r}")
        x = _as_float32(vectors)
        if x.shape[1] != self.dim:
            raise ValueError(f"the index holds {self.dim}-d vectors, got {x.shape[1]}-d ones (shape {x.shape})")
        scores, ids = self.index.search(x, min(k, len(self)))  # (Q, k) each; id -1: fewer than k found
        return [
            [self._hit(rank, float(s), int(i)) for rank, (s, i) in enumerate(zip(row_s, row_i, strict=True), 1)
             if i >= 0]
            for row_s, row_i in zip(scores, ids, strict=True)
        ]  # fmt: skip

    def _hit(self, rank: int, score: float, i: int) -> Hit:
        return Hit(rank, score, **{f: self.items[f][i] for f in FIELDS})

    def query_text(self, texts: Sequence[str], k: int = 10) -> list[list[Hit]]:
        """The ``k`` images nearest each text."""
        if isinstance(texts, str) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError("query_text takes a non-empty list of non-empty strings, e.g. ['a red circle']")
        model = self.model()
        with torch.no_grad():
            embeds = model.encode_text(self._tokenizer(list(texts)).to(self.device), normalize=True)  # (Q, E)
        return self.search(embeds, k)

    def query_image(self, images: Sequence[Image.Image], k: int = 10) -> list[list[Hit]]:
        """The ``k`` images nearest each PIL image (any mode and size: preprocessed as the collection was)."""
        if isinstance(images, Image.Image) or not images or not all(isinstance(i, Image.Image) for i in images):
            raise ValueError("query_image takes a non-empty list of PIL images, e.g. [PIL.Image.open(path)]")
        model, transform = self.model(), self.clip.transform
        with torch.no_grad():
            batch = torch.stack([transform(image) for image in images]).to(self.device)  # (Q, 3, S, S)
            embeds = model.encode_image(batch, normalize=True)  # (Q, E)
        return self.search(embeds, k)

    def model(self) -> CLIP:
        """The CLIP that built the index, loaded (and its weights checked) on first use."""
        with self._lock:
            if self._model is None:
                self._model = self.clip.load(self.device)
                self._tokenizer = ClipTokenizer(context_length=self._model.cfg.text.context_length)
        return self._model
