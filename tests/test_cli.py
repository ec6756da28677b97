"""The CLI runner's thread setting: --threads N|auto, and auto's choice on a busy machine."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys

import pytest
import torch

from multimodal import cli


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    cli.add_threads_argument(p)
    return p


def test_threads_argument_takes_a_number_or_auto(capsys):
    assert parser().parse_args([]).threads == 0
    assert parser().parse_args(["--threads", "auto"]).threads == 0
    assert parser().parse_args(["--threads", "3"]).threads == 3
    for bad in ("-1", "two"):
        with pytest.raises(SystemExit):
            parser().parse_args(["--threads", bad])
        assert "expected a whole number of threads" in capsys.readouterr().err


def test_explicit_threads_are_set(restore_threads):
    assert cli.configure_threads(1) == 1 and torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="threads must be >= 1"):
        cli.configure_threads(-2)


def test_auto_follows_omp_num_threads_when_set(monkeypatch, restore_threads):
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(cli, "busy_cores", lambda: pytest.fail("measured the load although OMP_NUM_THREADS is set"))
    assert cli.configure_threads(0) == 1


def test_auto_leaves_the_busy_cores_to_the_other_job(monkeypatch, capsys, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(cli, "busy_cores", lambda: 2.6)
    assert cli.configure_threads(0) == 1 and torch.get_num_threads() == 1
    assert "3 of 4 cores busy with other work; computing with 1 thread(s)" in capsys.readouterr().err
    monkeypatch.setattr(cli, "busy_cores", lambda: 0.2)
    assert cli.configure_threads(0) == 4 and torch.get_num_threads() == 4
    assert capsys.readouterr().err == ""  # all cores free: nothing to say
    monkeypatch.setattr(cli, "busy_cores", lambda: 9.0)
    assert cli.configure_threads(0) == 1  # never fewer than one


def test_busy_cores_reads_the_machine():
    busy = cli.busy_cores(0.05)
    assert 0.0 <= busy <= (os.cpu_count() or 1) + 1e-6


# A training step whose embedding gradient (49,408 x 128, 25 MiB) is allocated afresh every step, as CLIP's is.
FAULTS = """
import resource, sys, torch
from multimodal import cli
if sys.argv[1] == "keep":
    assert cli.keep_freed_memory()
model = torch.nn.Sequential(torch.nn.Embedding(49408, 128), torch.nn.Linear(128, 512), torch.nn.GELU())
opt = torch.optim.AdamW(model.parameters())
tokens = torch.randint(0, 49408, (128, 24))
def step():
    model(tokens).square().mean().backward()
    opt.step()
    opt.zero_grad()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_kept_freed_memory_is_not_page_faulted_back_each_step():
    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", FAULTS, mode], check=True, capture_output=True, text=True)
        return int(out.stdout)

    system, kept = faults("system"), faults("keep")
    assert system > 10 * 6176  # at least the gradient's 6,176 pages, faulted in afresh each step
    assert kept * 5 < system
