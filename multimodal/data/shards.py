"""Atomic, byte-reproducible WebDataset shard writing in the img2dataset layout.

A split directory holds ``000000.tar, 000001.tar, ...`` (each sample stored as ``<key>.<ext>`` members)
plus one ``000000_stats.json`` per shard. A dataset directory is complete once its ``manifest.json``
exists: generators write the manifest last, so a crash leaves a directory that :func:`is_complete`
rejects and the generator rebuilds.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from ..io import atomic_write_bytes

MANIFEST_NAME = "manifest.json"
SHARD_DIGITS = 6
# Fixed tar header fields so that the same samples always give the same bytes.
TAR_MTIME = 946684800  # 2000-01-01T00:00:00Z
TAR_MODE = 0o644

Sample = dict[str, Any]


def shard_name(index: int) -> str:
    """File name of shard ``index``: ``000012.tar``."""
    if index < 0:
        raise ValueError(f"shard index must be >= 0, got {index}")
    return f"{index:0{SHARD_DIGITS}d}.tar"


def shard_pattern(n_shards: int) -> str:
    """Brace pattern covering ``n_shards`` shards, e.g. ``{000000..000019}.tar`` for 20."""
    if n_shards < 1:
        raise ValueError(f"a split needs at least one shard, got n_shards={n_shards}")
    return f"{{{0:0{SHARD_DIGITS}d}..{n_shards - 1:0{SHARD_DIGITS}d}}}.tar"


def num_shards(num_samples: int, samples_per_shard: int) -> int:
    """Number of shards ``num_samples`` fill at ``samples_per_shard`` each (the last may be short)."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if num_samples < 1:
        raise ValueError(f"a split needs at least one sample, got {num_samples}")
    return -(-num_samples // samples_per_shard)


def _encode(key: str, ext: str, value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")
    raise ValueError(f"sample {key!r}: field {ext!r} must be bytes, str, dict or list, got {type(value).__name__}")


def write_shard(path: Path, samples: Iterable[Sample]) -> int:
    """Write ``samples`` to the tar file ``path`` (atomically, fsynced) plus its stats file.

    Each sample is ``{"__key__": str, ext: bytes | str | dict, ...}``; fields are stored as ``<key>.<ext>``
    in sorted extension order with fixed header fields, so equal samples give byte-identical shards.
    Returns the number of samples written.
    """
    path = Path(path)
    buf = io.BytesIO()
    count = 0
    seen: set[str] = set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for sample in samples:
            key = sample.get("__key__")
            if not isinstance(key, str) or not key or "." in key or "/" in key:
                raise ValueError(f"each sample needs a '__key__' string without '.' or '/', got {key!r}")
            if key in seen:
                raise ValueError(f"duplicate sample key {key!r} in shard {path.name}")
            seen.add(key)
            for ext in sorted(k for k in sample if not k.startswith("_")):
                data = _encode(key, ext, sample[ext])
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.mtime = TAR_MTIME
                info.mode = TAR_MODE
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
            count += 1
    atomic_write_bytes(path, buf.getvalue(), fsync=True)
    stats = {"count": count, "successes": count, "failed_to_download": 0, "failed_to_resize": 0}
    stats_path = path.with_name(path.name.removesuffix(".tar") + "_stats.json")
    atomic_write_bytes(stats_path, (json.dumps(stats, indent=2, sort_keys=True) + "\n").encode("utf-8"), fsync=True)
    return count


def clear_split(out_dir: Path) -> None:
    """Create ``out_dir`` and remove any shards, stats files and temporary files left in it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for pattern in ("*.tar", "*.tar*.tmp", "*_stats.json", "*_stats.json*.tmp"):
        for stale in out_dir.glob(pattern):
            stale.unlink()


def _chunks(samples: Iterable[Sample], size: int) -> Iterator[list[Sample]]:
    it = iter(samples)
    while chunk := list(islice(it, size)):
        yield chunk


def write_split(out_dir: Path, samples: Iterable[Sample], *, samples_per_shard: int) -> list[str]:
    """Write ``samples`` into ``out_dir`` as consecutive shards; returns the shard file names in order.

    Stale shards already in ``out_dir`` are removed first, so the directory never mixes two runs.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    out_dir = Path(out_dir)
    clear_split(out_dir)
    names = []
    for index, chunk in enumerate(_chunks(samples, samples_per_shard)):
        names.append(shard_name(index))
        write_shard(out_dir / names[-1], chunk)
    if not names:
        raise ValueError(f"no samples to write to {out_dir}")
    return names


def read_shard(path: Path) -> list[dict[str, Any]]:
    """The samples of one shard, in order: ``{"__key__": key, ext: raw bytes, ...}`` (no decoding)."""
    samples: list[dict[str, Any]] = []
    with tarfile.open(path, mode="r") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            if not samples or samples[-1]["__key__"] != key:
                samples.append({"__key__": key})
            samples[-1][ext] = tar.extractfile(member).read()
    return samples


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Write ``out_dir/manifest.json`` atomically; call it last, its presence marks the dataset complete."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    atomic_write_bytes(out_dir / MANIFEST_NAME, text.encode("utf-8"), fsync=True)


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    """The manifest of the dataset in ``out_dir``, or None when there is none or it cannot be parsed."""
    try:
        manifest = json.loads((Path(out_dir) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def is_complete(out_dir: Path) -> bool:
    """True when ``out_dir`` holds a finished dataset (a readable ``manifest.json``)."""
    return read_manifest(out_dir) is not None


def remove_manifest(out_dir: Path) -> None:
    """Mark ``out_dir`` incomplete before rewriting it."""
    (Path(out_dir) / MANIFEST_NAME).unlink(missing_ok=True)


def split_files_present(out_dir: Path, manifest: dict[str, Any]) -> bool:
    """True when every shard listed in ``manifest["splits"]`` exists under ``out_dir``."""
    for split in manifest.get("splits", {}).values():
        directory, _, _ = split["shards"].rpartition("/")
        for index in range(split["num_shards"]):
            if not (Path(out_dir) / directory / shard_name(index)).is_file():
                return False
    return True
