"""A checkpoint write that fails for lack of space leaves the previous checkpoint intact, removes its partial folder
and stops the run with a clear error; once space is back, ``resume=latest`` finishes the run as if nothing happened."""

from __future__ import annotations

import errno
import hashlib
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import training.checkpoint
from tests.conftest import REPO, tiny_recipe, train_recipe, write_recipe
from training.checkpoint import CheckpointError, list_checkpoints


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.*")}


def _fill_disk_at(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """From the ``call``-th weights file on, write half of it and fail with ENOSPC, as a full disk does."""
    save_file = training.checkpoint.save_file
    calls = 0

    def save_file_on_a_full_disk(tensors, filename, *args, **kwargs):
        nonlocal calls
        calls += 1
        save_file(tensors, filename, *args, **kwargs)
        if calls >= call:
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))

    monkeypatch.setattr(training.checkpoint, "save_file", save_file_on_a_full_disk)


def test_full_disk_keeps_the_previous_checkpoint_and_resume_finishes_the_run(
    tiny_shapes, tmp_path, monkeypatch, faults
):
    straight = train_recipe(tmp_path, tiny_recipe(tiny_shapes, tmp_path / "straight", train={"ema_decay": 0.9}))
    recipe = tiny_recipe(tiny_shapes, tmp_path / "run", train={"ema_decay": 0.9})
    _fill_disk_at(monkeypatch, call=3)  # step 4 writes two weights files (model, EMA); step 8's first one fails
    with pytest.raises(CheckpointError) as failure:
        train_recipe(tmp_path, recipe)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert str(failure.value) == (
        f"could not write checkpoint step-00000008 in {checkpoints}: No space left on device "
        f"({checkpoints / '.tmp-step-00000008' / '.model.safetensors.tmp'}); the previous checkpoint "
        f"{checkpoints / 'step-00000004'} is intact. Free disk space (or set run.out_dir elsewhere) and continue "
        "with resume=latest"
    )
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000004"]
    intact = _digest(checkpoints / "step-00000004")
    monkeypatch.undo()  # space is back
    resumed = train_recipe(tmp_path, recipe, ["resume=latest"])
    assert resumed["step"] == straight["step"] == 8
    assert intact == _digest(checkpoints / "step-00000004")
    for name in ("model.safetensors", "model_ema.safetensors"):
        a, b = load_file(tmp_path / "straight" / name), load_file(tmp_path / "run" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    faults("disk full (ENOSPC) in a checkpoint write", "4 steps recomputed, previous checkpoint byte-identical")


def test_a_write_the_kernel_refuses_stops_the_cli_in_one_line(tiny_shapes, tmp_path, faults):
    """A real failing write(2): the resumed run may not write files over 16 KiB (RLIMIT_FSIZE), so its first
    checkpoint fails with EFBIG inside safetensors / torch.save; Python ignores SIGXFSZ, so the write returns it."""
    # No DataLoader workers: they pass batches through files in /dev/shm, which the limit would also refuse.
    recipe = tiny_recipe(tiny_shapes, tmp_path / "run", train={"steps": 8}, data={"num_workers": 0})
    recipe = write_recipe(tmp_path / "r.yaml", recipe)
    base = [sys.executable, "-m", "training.train", str(recipe)]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    first = subprocess.run([*base, "train.stop_at=4"], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    checkpoints = tmp_path / "run" / "checkpoints"
    before = _digest(checkpoints / "step-00000004")

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, 16 << 10))

    proc = subprocess.run(
        [*base, "resume=latest"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=small_files,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("error: could not write checkpoint step-00000008") and "File too large" in errors[0]
    assert f"the previous checkpoint {checkpoints / 'step-00000004'} is intact" in errors[0]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000004"]
    assert _digest(checkpoints / "step-00000004") == before
    again = subprocess.run([*base, "resume=latest"], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [4, 8]
    faults("write(2) refused (EFBIG, RLIMIT_FSIZE)", "4 steps recomputed, previous checkpoint byte-identical")
