"""Atomic file writes: the one place that writes a file through a temporary file and a rename.

Every writer here writes into a hidden temporary file in the destination's folder (``.<name>.tmp``) and renames it
onto the destination, so a crash leaves the old file or the new one, never half of one. The temporary name is fixed,
so what a crash left is overwritten by the next write of the same file instead of piling up; one process writes a
given file (in the trainer, the main one). Parent folders are created. On any exception the temporary file is
removed and the exception propagates unchanged. ``fsync=True`` flushes the file to disk before the rename (what
checkpoints and shards ask for).

>>> atomic_write_json(run_dir / "results.json", {"top1": 0.93})
>>> with atomic_path(run_dir / "model.safetensors") as tmp:  # for writers that want a file name
...     shutil.copyfile(checkpoint / "model.safetensors", tmp)

:func:`atomic_dir` does the same for a whole folder (an export, a dataset written in a new layout).

``torch.save`` through :func:`atomic_path` names its zip records after the temporary file; ``torch.load`` does not
mind, but the bytes differ from those of a direct ``torch.save`` in those names.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import locale
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the command lines import this module before torch, so that --help stays instant
    import torch
    from PIL import Image

__all__ = [
    "atomic_path",
    "atomic_save_image",
    "atomic_save_safetensors",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "exclusive_lock",
]


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on any exception removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing; left in place) for the ``with`` block: a second
    process asking for it waits until the first leaves, e.g. to find the file the first one wrote instead of
    writing it again. The lock goes with the process, so a killed holder never leaves it stuck."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike[str]) -> Iterator[Path]:
    """A new hidden folder beside ``out`` to fill; when the block ends, it is renamed onto ``out`` (an existing
    ``out`` is moved aside first and removed after), so ``out`` is the old folder or the complete new one, never half
    of one. On an exception the new folder is removed and ``out`` left as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = f".{out.name}.{os.getpid()}-{secrets.token_hex(4)}"
    tmp, old = out.with_name(f"{stem}.tmp"), out.with_name(f"{stem}.old")
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike[str], text: str, *, fsync: bool = False) -> None:
    """Write ``text`` to ``path`` atomically, in the locale's encoding (as ``open(path, "w")`` does)."""
    atomic_write_bytes(path, text.encode(locale.getpreferredencoding(False)), fsync=fsync)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2, fsync: bool = False) -> None:
    """Write ``json.dumps(obj, indent=indent)`` and a newline to ``path`` atomically (ASCII: non-ASCII is escaped)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=indent) + "\n").encode("utf-8"), fsync=fsync)


def atomic_save_image(image: Image.Image, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
    """Save a PIL image to ``path`` atomically, in the format its suffix names (``.jpg`` is JPEG; none is PNG)."""
    path = Path(path)
    with atomic_path(path, fsync=fsync) as tmp:
        image.save(tmp, format=path.suffix.lstrip(".").upper().replace("JPG", "JPEG") or "PNG")


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: dict[str, str] | None = None,
    *,
    fsync: bool = False,
) -> None:
    """Save ``tensors`` (and string ``metadata``) to the safetensors file ``path`` atomically."""
    from safetensors.torch import save_file

    with atomic_path(path, fsync=fsync) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
