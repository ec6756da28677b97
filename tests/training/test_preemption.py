"""training.preemption: a stop signal sets a flag that every process agrees on; the handlers come and go."""

from __future__ import annotations

import os
import signal

import pytest

from multimodal.config import ConfigError
from training.config import TrainConfig
from training.preemption import Preemption


class _One:  # a single process: nothing to ask the others
    num_processes = 1


def test_a_configured_signal_sets_the_flag_and_the_handlers_are_put_back():
    before = signal.getsignal(signal.SIGUSR1)
    stop = Preemption(("SIGTERM", "SIGUSR1"))
    stop.install()
    try:
        assert not stop.agreed(_One())
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR1)  # a second one changes nothing
        assert stop.received == "SIGUSR1" and stop.agreed(_One()) and stop.stopping
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGUSR1) is before


def test_stop_signals_are_checked_in_the_recipe():
    cfg = TrainConfig.from_dict({"train": {"stop_signals": "SIGTERM,SIGUSR1"}})
    assert cfg.train.stop_signals == ("SIGTERM", "SIGUSR1")
    with pytest.raises(ConfigError, match=r"train.stop_signals may name SIGTERM, SIGUSR1, SIGUSR2; got \['SIGKILL'\]"):
        TrainConfig.from_dict({"train": {"stop_signals": ["SIGKILL"]}})
