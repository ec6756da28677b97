"""Deterministic, resumable sample streams over WebDataset shards or image folders.

Every DataLoader worker of every rank is one *consumer*. A consumer's stream is a pure function of
``(seed, rank, world_size, worker, num_workers)``, and the DataLoader takes batches from workers in
strict rotation, so the batch a rank sees at step ``n`` is fixed. Resuming at batch ``n`` therefore only
has to drop the raw samples each worker already delivered, before decoding them; the run continues from
the exact sample, mid-epoch, with the same shuffle.

Batches are built from ``batch_size`` *raw* samples and decoded afterwards: a corrupt sample shortens its
batch instead of shifting every later batch, which is what keeps resumption exact on imperfect data. What
was skipped, and why, travels with each batch under ``"skipped"`` and is tallied by :class:`SkipStats`.
"""

from __future__ import annotations

import atexit
import itertools
import json
import multiprocessing.util  # noqa: F401 - registers its exit hook, which must come before ours
import os
import random
import signal
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .constants import STOP_SIGNALS

__all__ = [
    "STOP_SIGNALS",
    "DecodeError",
    "SampleStream",
    "SkipStats",
    "expected_count",
    "folder_samples",
    "make_loader",
]


class DecodeError(ValueError):
    """A sample that cannot be used; ``reason`` is a short category used for counting."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class SkipStats:
    """Counts of skipped samples by (source shard or folder, reason), plus unreadable shards."""

    samples: Counter = field(default_factory=Counter)
    shards: dict[str, str] = field(default_factory=dict)

    def update(self, events: list[tuple[str, str, str]]) -> None:
        for kind, source, reason in events:
            if kind == "sample":
                self.samples[(source, reason)] += 1
            else:
                self.shards[source] = reason

    def merge(self, other: SkipStats) -> None:
        self.samples.update(other.samples)
        self.shards.update(other.shards)

    @property
    def total(self) -> int:
        return sum(self.samples.values())

    def summary(self) -> str:
        """One line per source, e.g. ``train/000003.tar: 2 corrupt image``; empty if nothing was skipped."""
        lines = []
        by_source: dict[str, list[str]] = {}
        for (source, reason), n in sorted(self.samples.items()):
            by_source.setdefault(source, []).append(f"{n} {reason}")
        for source, reason in sorted(self.shards.items()):
            by_source.setdefault(source, []).append(reason)
        for source, parts in by_source.items():
            lines.append(f"  {_short(source)}: {', '.join(parts)}")
        if not lines:
            return ""
        return f"skipped {self.total} samples, {len(self.shards)} shards unreadable:\n" + "\n".join(lines)

    def state_dict(self) -> dict[str, Any]:
        return {"samples": [[s, r, n] for (s, r), n in self.samples.items()], "shards": dict(self.shards)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.samples = Counter({(s, r): n for s, r, n in state.get("samples", [])})
        self.shards = dict(state.get("shards", {}))

    def to_json(self) -> dict[str, Any]:
        return {
            "skipped_samples": self.total,
            "by_source": {f"{_short(s)} ({r})": n for (s, r), n in sorted(self.samples.items())},
            "unreadable_shards": {_short(s): r for s, r in sorted(self.shards.items())},
        }


def _short(path: str) -> str:
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def expected_count(url: str) -> int | None:
    """Samples listed for a shard in its img2dataset ``_stats.json``, if present."""
    stats = Path(url).with_name(Path(url).stem + "_stats.json")
    try:
        data = json.loads(stats.read_text())
    except (OSError, ValueError):
        return None
    count = data.get("successes", data.get("count"))
    return int(count) if isinstance(count, int) else None


def folder_samples(root: str | Path) -> list[dict[str, Any]]:
    """Raw samples ``{"__key__", "__url__", "__path__", "cls"}`` of ``root/<class>/<image>``, in torchvision
    ``ImageFolder`` order and class indices (sorted class folders)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    root = Path(root)
    try:
        _, class_to_idx = find_classes(str(root))
        pairs = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{root} is not an image folder with class subfolders: {e}") from None
    return [
        {"__key__": str(Path(path).relative_to(root).with_suffix("")), "__url__": str(Path(path).parent),
         "__path__": path, "cls": index}
        for path, index in pairs
    ]  # fmt: skip


class SampleStream(IterableDataset):
    """Batches of decoded samples from shards (``urls``) or a list of raw folder samples (``items``).

    Args:
        urls: WebDataset shard paths, or None with ``items``.
        items: raw samples of an image folder (see :func:`folder_samples`).
        decode: raw sample dict -> decoded sample dict; raises :class:`DecodeError` to skip it.
        collate: list of decoded samples -> batch dict.
        batch_size: raw samples per batch.
        seed: drives the shard order, the shuffle buffer and per-sample augmentation.
        rank, world_size: this process and how many there are (shards are split across ranks x workers).
        infinite: loop over epochs forever (training) or make a single ordered pass (evaluation).
        resampled: draw shards with replacement, independently per consumer (open_clip's --dataset-resampled).
        shuffle_buffer: samples held for shuffling (0 = no shuffle).
        start_batch: batches this rank already consumed (resume).
    """

    def __init__(
        self,
        *,
        urls: list[str] | None = None,
        items: list[dict[str, Any]] | None = None,
        decode: Callable[[dict[str, Any]], dict[str, Any]],
        collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        infinite: bool = True,
        resampled: bool = False,
        shuffle_buffer: int = 1000,
        start_batch: int = 0,
    ) -> None:
        super().__init__()
        if (urls is None) == (items is None):
            raise ValueError("give exactly one of urls (shards) or items (folder samples)")
        if not (urls or items):
            raise ValueError("the dataset split is empty: no shards or images found")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.urls, self.items = urls, items
        self.decode, self.collate = decode, collate
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.infinite, self.resampled = infinite, resampled
        self.shuffle_buffer, self.start_batch = shuffle_buffer, start_batch

    # -- raw samples --------------------------------------------------------------------------------------------
    def _consumer(self) -> tuple[int, int, int, int]:
        """(consumer id, consumer count, logical worker, workers) of the calling DataLoader worker.

        The DataLoader asks its workers in rotation starting from worker 0, so after ``start_batch`` batches the
        next one is due from logical worker ``start_batch % workers``: physical worker p plays that part.
        """
        info = get_worker_info()
        physical, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        worker = (physical + self.start_batch) % workers
        return self.rank * workers + worker, self.world_size * workers, worker, workers

    def _epochs(self) -> Iterator[int]:
        return itertools.count() if self.infinite else iter([0])

    def _shard_samples(self, consumer: int, consumers: int, events: list) -> Iterator[dict[str, Any]]:
        errors: dict[str, str] = {}
        current = ""
        tried: set[str] = set()
        delivered = 0

        def check_readable() -> None:
            """An endless stream that read every shard and got no sample would spin forever: fail instead."""
            if delivered or tried != set(self.urls):
                return
            example = next(iter(errors.items()), None)
            detail = f", e.g. {_short(example[0])}: {example[1]}" if example else ""
            raise ValueError(
                f"no sample reached data-loader consumer {consumer} of {consumers} after it read all {len(tried)} "
                f"shards{detail}; they are unreadable or empty, or hold fewer samples than there are consumers "
                "(ranks x data.num_workers)"
            )

        def handler(exn: Exception) -> bool:
            errors.setdefault(current, str(exn.args[0]).split(" @ ")[0] if exn.args else type(exn).__name__)
            return True

        def opened(urls: list[str]) -> Iterator[dict[str, Any]]:
            nonlocal current
            for url in urls:
                current, read = url, 0
                tried.add(url)
                errors.pop(url, None)
                for sample in wds.tariterators.tarfile_samples([{"url": url}], handler=handler):
                    read += 1
                    yield sample
                # A shard cut inside a tar header ends quietly: the count in _stats.json is the only witness.
                expected = expected_count(url)
                lost = f", {expected - read} of {expected} samples lost" if expected and read < expected else ""
                if url in errors:
                    events.append(("shard", url, f"unreadable after {read} samples ({errors[url]}){lost}"))
                elif lost:
                    events.append(("shard", url, f"truncated: ended after {read} samples{lost}"))

        if self.resampled:  # each consumer draws its own shards with replacement, one "epoch" = len(urls) draws
            rng = random.Random(f"{self.seed}-resampled-{consumer}")
            for epoch in itertools.count():
                for sample in opened([rng.choice(self.urls) for _ in range(len(self.urls))]):
                    sample["__epoch__"] = epoch
                    delivered += 1
                    yield sample
                check_readable()
        split_shards = len(self.urls) >= consumers
        for epoch in self._epochs():
            order = list(self.urls)
            if self.infinite:
                random.Random(f"{self.seed}-shards-{epoch}").shuffle(order)
            if split_shards:
                samples = opened(order[consumer::consumers])
            else:  # fewer shards than consumers: every consumer reads all, keeps every consumers-th sample
                samples = itertools.islice(opened(order), consumer, None, consumers)
            for sample in samples:
                sample["__epoch__"] = epoch
                delivered += 1
                yield sample
            if self.infinite:
                check_readable()

    def _folder_samples(self, consumer: int, consumers: int) -> Iterator[dict[str, Any]]:
        for epoch in self._epochs():
            order = list(range(len(self.items)))
            if self.infinite:
                random.Random(f"{self.seed}-folder-{epoch}").shuffle(order)
            for i in order[consumer::consumers]:
                yield {**self.items[i], "__epoch__": epoch}

    # -- batches ------------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        consumer, consumers, worker, workers = self._consumer()
        events: list[tuple[str, str, str]] = []
        if self.urls is not None:
            raw = self._shard_samples(consumer, consumers, events)
        else:
            raw = self._folder_samples(consumer, consumers)
        if self.shuffle_buffer > 1 and self.infinite:
            rng = random.Random(f"{self.seed}-buffer-{consumer}")
            raw = wds.filters._shuffle(raw, bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)
        # Batches of this rank come from workers in rotation: worker w delivered batches w, w + W, ...
        done = max(0, -(-(self.start_batch - worker) // workers))
        skip = done * self.batch_size
        if skip:
            for _ in itertools.islice(raw, skip):
                pass
            events.clear()  # counted by the run that consumed them
        while True:
            chunk = list(itertools.islice(raw, self.batch_size))
            if not chunk:
                if events:  # the last shard, read to its end only now, was unreadable: a last, empty batch says so
                    yield {"skipped": list(events), "size": 0}
                return
            good = []
            for sample in chunk:
                try:
                    good.append(self.decode(sample))
                except DecodeError as e:
                    events.append(("sample", sample.get("__url__", "?"), e.reason))
            batch = self.collate(good) if good else {}
            batch["skipped"], events[:] = list(events), []
            batch["size"] = len(good)
            yield batch


def make_loader(stream: SampleStream, *, num_workers: int, seed: int = 0) -> DataLoader:
    """A DataLoader yielding the stream's batches as they are; its own generator leaves the global RNG alone."""
    return _Loader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
        multiprocessing_context="fork" if num_workers > 0 and os.name == "posix" else None,
        worker_init_fn=_leave_stop_signals_to_the_trainer,
    )


def _leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    """A scheduler's stop signal (SIGTERM, SIGUSR1/2) sent to the whole process group reaches the workers too; the
    trainer stops with a checkpoint and shuts its workers down itself, so they ignore it."""
    for name in STOP_SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_IGN)


class _Loader(DataLoader):
    """A DataLoader whose worker processes end with the interpreter.

    At exit, ``multiprocessing`` ends daemonic children with SIGTERM and then waits for them; these workers ignore
    SIGTERM, so an iterator still alive then (held by a traceback or a reference cycle) would hang the exit forever.
    An exit hook that runs first kills the workers of every live iterator instead."""

    def _get_iterator(self):
        iterator = super()._get_iterator()
        if self.num_workers > 0:
            _LIVE_ITERATORS.add(iterator)
        return iterator


_LIVE_ITERATORS: weakref.WeakSet = weakref.WeakSet()


def _kill_live_workers() -> None:
    for iterator in list(_LIVE_ITERATORS):
        for worker in getattr(iterator, "_workers", []):
            if worker.is_alive():
                worker.kill()
                worker.join()


# atexit runs hooks last-registered first: this one is registered after multiprocessing's (imported above), so it runs
# before multiprocessing waits for its children.
atexit.register(_kill_live_workers)
