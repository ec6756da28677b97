"""multimodal._lazy: names of a package or module imported on first read, then plain attributes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

_CHECK = """
import sys
import training.train as module
assert "training.trainer" not in sys.modules and "train" not in vars(module)
from training.train import PeerLostError, train
assert "training.trainer" in sys.modules and vars(module)["train"] is train
from training.guard import PeerLostError as guard_error
assert PeerLostError is guard_error and {"train", "PeerLostError", "main"} <= set(dir(module))
import multimodal.data as data
assert "load_card" in dir(data) and data.load_card.__module__ == "multimodal.data.cards"
"""


def test_a_module_and_a_package_import_their_exports_on_first_read() -> None:
    done = subprocess.run([sys.executable, "-c", _CHECK], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_an_unknown_name_is_an_attribute_error() -> None:
    import multimodal.data

    with pytest.raises(AttributeError, match=r"module 'multimodal\.data' has no attribute 'load_cards'"):
        multimodal.data.load_cards  # noqa: B018
    assert not hasattr(multimodal.data, "nothing_here")
