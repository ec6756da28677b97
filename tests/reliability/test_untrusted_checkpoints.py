"""A checkpoint from a stranger never runs code: weights load from safetensors, everything else through
``torch.load(weights_only=True)`` or JSON. Pickle payloads planted in each file of a checkpoint are refused and the
code in them never runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from multimodal.config import ConfigError
from tests.conftest import run_cli, tiny_recipe, train_recipe, write_recipe
from training.checkpoint import CheckpointError


class Payload:
    """Unpickling this runs ``open(marker, "w")``: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


@pytest.fixture(scope="module")
def run(tiny_shapes, tmp_path_factory) -> Path:
    """A finished tiny run with EMA and a checkpoint at step 4 and 8."""
    tmp = tmp_path_factory.mktemp("trusted")
    train_recipe(tmp, tiny_recipe(tiny_shapes, tmp / "run", train={"ema_decay": 0.9}))
    return tmp / "run"


def _copy_with(run: Path, tmp_path: Path, plant: str, payload: object) -> Path:
    """A copy of ``run`` whose newest checkpoint has ``plant`` replaced by a torch.save of ``payload``."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    target = copy / "checkpoints" / "step-00000008" / plant
    target.unlink(missing_ok=True)
    torch.save(payload, target)
    return copy


@pytest.mark.parametrize(
    "plant", ["accelerator/optimizer.bin", "accelerator/random_states_0.pkl", "accelerator/custom_checkpoint_0.pkl"]
)
def test_planted_pickle_payload_is_refused_and_never_runs(run, tiny_shapes, tmp_path, plant, faults):
    marker = tmp_path / "pwned"
    copy = _copy_with(run, tmp_path, plant, {"state": Payload(marker)})
    recipe = tiny_recipe(tiny_shapes, copy, train={"ema_decay": 0.9, "steps": 12})
    # custom_checkpoint_*.pkl: an older trainer's layout, pickled trainer state that Accelerate would unpickle freely
    why = "it keeps trainer state in pickles" if "custom_checkpoint" in plant else "a file in it holds pickled objects"
    with pytest.raises(CheckpointError, match=rf"refusing to load .*step-00000008: {why}"):
        train_recipe(tmp_path, recipe, ["resume=latest"])
    assert not marker.exists(), "the payload ran"
    faults("pickle payload planted in a checkpoint", "nothing: refused, the payload never ran")


def test_the_cli_refuses_in_one_line_with_a_nonzero_exit(run, tiny_shapes, tmp_path):
    marker = tmp_path / "pwned"
    copy = _copy_with(run, tmp_path, "accelerator/optimizer.bin", Payload(marker))
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tiny_shapes, copy, train={"ema_decay": 0.9, "steps": 12}))
    proc = run_cli("-m", "training.train", str(recipe), "resume=latest")
    assert proc.returncode == 1
    assert not marker.exists(), "the payload ran"
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "refusing to load" in errors[0] and "checkpoints you trust" in errors[0], proc.stderr


def test_weights_that_are_not_safetensors_are_refused(run, tiny_shapes, tmp_path):
    marker = tmp_path / "pwned"
    copy = _copy_with(run, tmp_path, "model_ema.safetensors", Payload(marker))
    recipe = tiny_recipe(tiny_shapes, copy, train={"ema_decay": 0.9, "steps": 12})
    with pytest.raises(CheckpointError, match=r"cannot resume from .*step-00000008: it is damaged"):
        train_recipe(tmp_path, recipe, ["resume=latest"])
    assert not marker.exists()


def test_model_loading_reads_safetensors_only(run, tmp_path):
    from multimodal import load_checkpoint

    marker = tmp_path / "pwned"
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "model.safetensors").unlink()
    (copy / "model_ema.safetensors").unlink()
    torch.save(Payload(marker), copy / "pytorch_model.bin")  # the file a .bin-reading loader would pick up
    with pytest.raises(ConfigError, match=r"has no model\.safetensors"):
        load_checkpoint(copy)
    torch.save(Payload(marker), copy / "model.safetensors")
    with pytest.raises(ConfigError, match=r"model.safetensors is not a readable safetensors file .*damaged"):
        load_checkpoint(copy, ema=False)
    assert not marker.exists()


def test_inception_state_dict_is_loaded_weights_only(tmp_path):
    import pickle

    from multimodal.evaluation import InceptionFeatures

    marker = tmp_path / "pwned"
    torch.save({"fc.weight": Payload(marker)}, tmp_path / "inception.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        InceptionFeatures(tmp_path / "inception.pt")
    assert not marker.exists()
