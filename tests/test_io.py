"""multimodal.io: each atomic writer writes the bytes a plain write does; a failed write leaves the previous file
byte-identical and no temporary file; temporary files are hidden, beside the destination and per process."""

from __future__ import annotations

import errno
import io
import json
import os
import tarfile
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save

import multimodal.io
from multimodal.io import (
    atomic_dir,
    atomic_path,
    atomic_save_image,
    atomic_save_safetensors,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    exclusive_lock,
)

RESULT = {"checkpoint": "runs/clip", "results": {"top1": 0.8125, "name": "café ☕"}, "steps": [1, 2]}
TENSORS = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "ids": torch.tensor([3, 1, 2])}


def _image() -> Image.Image:
    pixels = torch.arange(16 * 24 * 3, dtype=torch.int64).remainder(251).to(torch.uint8).reshape(16, 24, 3)
    return Image.fromarray(pixels.numpy())


def _image_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    _image().save(buf, format=fmt)
    return buf.getvalue()


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_bytes_and_text_equal_a_plain_write(tmp_path):
    data = bytes(range(256)) * 3
    atomic_write_bytes(tmp_path / "a.bin", data)
    (tmp_path / "plain.bin").write_bytes(data)
    text = "line one\nlíne two ☕\n"
    atomic_write_text(tmp_path / "a.txt", text)
    (tmp_path / "plain.txt").write_text(text)
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "plain.bin").read_bytes() == data
    assert (tmp_path / "a.txt").read_bytes() == (tmp_path / "plain.txt").read_bytes()
    assert _listing(tmp_path) == ["a.bin", "a.txt", "plain.bin", "plain.txt"]


@pytest.mark.parametrize("indent", [2, 1])
def test_json_is_json_dumps_plus_a_newline(tmp_path, indent):
    atomic_write_json(tmp_path / "r.json", RESULT, indent=indent)
    (tmp_path / "plain.json").write_text(json.dumps(RESULT, indent=indent) + "\n")  # what write_result wrote
    got = (tmp_path / "r.json").read_bytes()
    assert got == (tmp_path / "plain.json").read_bytes() == (json.dumps(RESULT, indent=indent) + "\n").encode()
    assert got.isascii() and b"caf\\u00e9 \\u2615" in got
    assert json.loads(got) == RESULT


def test_json_indent_defaults_to_2(tmp_path):
    atomic_write_json(tmp_path / "r.json", RESULT)
    assert (tmp_path / "r.json").read_text() == json.dumps(RESULT, indent=2) + "\n"


@pytest.mark.parametrize(("name", "fmt"), [("g.png", "PNG"), ("g.jpg", "JPEG"), ("g.jpeg", "JPEG"), ("g", "PNG")])
def test_image_format_follows_the_suffix(tmp_path, name, fmt):
    atomic_save_image(_image(), tmp_path / name)
    assert (tmp_path / name).read_bytes() == _image_bytes(fmt)
    assert _listing(tmp_path) == [name]


def test_safetensors_equal_a_plain_save(tmp_path):
    metadata = {"keys": json.dumps(["a", "b"])}
    atomic_save_safetensors(TENSORS, tmp_path / "m.safetensors", metadata=metadata)
    assert (tmp_path / "m.safetensors").read_bytes() == save(TENSORS, metadata=metadata)
    atomic_save_safetensors(TENSORS, tmp_path / "n.safetensors")
    assert (tmp_path / "n.safetensors").read_bytes() == save(TENSORS)
    # safetensors orders several metadata keys as a Rust HashMap does, differently from one save to the next,
    # so with more than one key only the content can be compared
    metadata = {"format": "pt", "keys": json.dumps(["a", "b"]), "fingerprint": "0" * 64}
    atomic_save_safetensors(TENSORS, tmp_path / "k.safetensors", metadata=metadata)
    with safe_open(tmp_path / "k.safetensors", framework="pt") as f:
        assert f.metadata() == metadata
        assert all(torch.equal(f.get_tensor(k), TENSORS[k]) for k in TENSORS)


def _tar(name: str | Path | io.BytesIO) -> None:
    kwargs = {"fileobj": name} if isinstance(name, io.BytesIO) else {"name": name}
    with tarfile.open(mode="w", format=tarfile.PAX_FORMAT, **kwargs) as tar:
        info = tarfile.TarInfo("s0.txt")
        info.size, info.mtime = 5, 946684800
        tar.addfile(info, io.BytesIO(b"12345"))


def test_atomic_path_hands_writers_a_hidden_name_beside_the_file(tmp_path):
    dest = tmp_path / "out" / "000000.tar"
    (dest.parent).mkdir()
    (dest.parent / ".000000.tar.tmp").write_bytes(b"what a crash left")  # overwritten, not piled up
    with atomic_path(dest) as tmp:
        assert tmp.parent == dest.parent
        assert tmp.name == ".000000.tar.tmp"
        _tar(tmp)
    plain = io.BytesIO()
    _tar(plain)
    assert dest.read_bytes() == plain.getvalue()
    assert _listing(dest.parent) == ["000000.tar"]


def test_torch_save_through_atomic_path_loads_the_same(tmp_path):
    """torch.save names its zip records after the file it is handed (here the temporary): the bytes differ from a
    direct save in those names only, and torch.load reads the same tensors."""
    with atomic_path(tmp_path / "model.pt") as tmp:
        torch.save(TENSORS, tmp)
    loaded = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(torch.equal(loaded[k], TENSORS[k]) for k in TENSORS)
    assert _listing(tmp_path) == ["model.pt"]


def test_parent_folders_are_created(tmp_path):
    atomic_write_bytes(tmp_path / "a" / "b" / "c.bin", b"xyz")
    atomic_write_json(tmp_path / "d" / "e.json", {"k": 1})
    atomic_save_image(_image(), tmp_path / "f" / "g" / "grid.png")
    atomic_save_safetensors(TENSORS, tmp_path / "h" / "m.safetensors")
    assert (tmp_path / "a" / "b" / "c.bin").read_bytes() == b"xyz"
    assert (tmp_path / "d" / "e.json").read_text() == '{\n  "k": 1\n}\n'
    assert (tmp_path / "f" / "g" / "grid.png").read_bytes() == _image_bytes("PNG")
    assert (tmp_path / "h" / "m.safetensors").read_bytes() == save(TENSORS)


WRITERS = {
    "bytes": lambda p: atomic_write_bytes(p, b"new" * 1000),
    "text": lambda p: atomic_write_text(p, "new\n" * 1000),
    "json": lambda p: atomic_write_json(p, {"new": list(range(100))}),
    "image": lambda p: atomic_save_image(_image(), p),
    "safetensors": lambda p: atomic_save_safetensors(TENSORS, p),
    "fsynced bytes": lambda p: atomic_write_bytes(p, b"new", fsync=True),
    "fsynced text": lambda p: atomic_write_text(p, "new", fsync=True),
}


@pytest.mark.parametrize("writer", WRITERS.values(), ids=WRITERS.keys())
def test_a_failed_rename_keeps_the_previous_file_and_no_temporary(tmp_path, monkeypatch, writer):
    dest = tmp_path / "out.png"
    old = b"previous content\x00\xff"
    dest.write_bytes(old)
    full = OSError(errno.ENOSPC, "No space left on device", "out.png")

    def replace_on_a_full_disk(src, dst):
        assert Path(src).is_file() and Path(src).stat().st_size > 0  # the temporary was written whole
        raise full

    monkeypatch.setattr(multimodal.io.os, "replace", replace_on_a_full_disk)
    with pytest.raises(OSError) as failure:
        writer(dest)
    assert failure.value is full
    assert (failure.value.errno, str(failure.value)) == (errno.ENOSPC, "[Errno 28] No space left on device: 'out.png'")
    assert dest.read_bytes() == old
    assert _listing(tmp_path) == ["out.png"]


def test_a_writer_that_fails_midway_leaves_the_previous_file_and_no_temporary(tmp_path):
    dest = tmp_path / "000000.tar"
    atomic_write_bytes(dest, b"old shard")

    def half_a_tar_then_a_full_disk(name: Path) -> None:
        with tarfile.open(name, "w") as tar:
            info = tarfile.TarInfo("s0.txt")
            info.size = 5
            tar.addfile(info, io.BytesIO(b"12345"))
        raise OSError(errno.EFBIG, "File too large", str(name))

    with pytest.raises(OSError) as failure, atomic_path(dest) as tmp:
        half_a_tar_then_a_full_disk(tmp)
    assert (failure.value.errno, failure.value.strerror) == (errno.EFBIG, "File too large")
    assert failure.value.filename == str(tmp_path / ".000000.tar.tmp")
    assert dest.read_bytes() == b"old shard"
    assert _listing(tmp_path) == ["000000.tar"]


def test_an_interrupt_removes_the_temporary_too(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "a.bin") as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("fsync", [False, True])
def test_fsync_only_when_asked(tmp_path, monkeypatch, fsync):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(multimodal.io.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    atomic_write_bytes(tmp_path / "a.bin", b"a", fsync=fsync)
    atomic_write_text(tmp_path / "a.txt", "a", fsync=fsync)
    atomic_write_json(tmp_path / "a.json", {}, fsync=fsync)
    atomic_save_image(_image(), tmp_path / "a.png", fsync=fsync)
    atomic_save_safetensors(TENSORS, tmp_path / "a.safetensors", fsync=fsync)
    with atomic_path(tmp_path / "a.pt", fsync=fsync) as tmp:
        torch.save(TENSORS, tmp)
    assert len(synced) == (6 if fsync else 0)


def test_exclusive_lock_makes_a_second_holder_wait_for_the_first(tmp_path):
    lock = tmp_path / "sub" / ".cache.lock"
    order: list[str] = []
    with exclusive_lock(lock):
        waiter = threading.Thread(target=lambda: exclusive_lock_and_note(lock, order))
        waiter.start()
        waiter.join(timeout=0.5)
        assert waiter.is_alive() and order == []  # still waiting: the lock is held here
        order.append("first released")
    waiter.join(timeout=10)
    assert order == ["first released", "second held"]
    assert lock.is_file()


def exclusive_lock_and_note(lock: Path, order: list[str]) -> None:
    with exclusive_lock(lock):  # flock locks belong to the open file, so another open() here waits as a process would
        order.append("second held")


def test_atomic_dir_replaces_a_folder_whole_or_not_at_all(tmp_path):
    out = tmp_path / "export"
    (out / "old.txt").parent.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("half")
        raise RuntimeError("killed mid-way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"] and (out / "old.txt").read_text() == "old"
    with atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"] and [p.name for p in out.iterdir()] == ["new.txt"]
