"""training.launch: a worker Accelerate left alone although WORLD_SIZE > 1 is refused in one line, before anything
is written; the process group is checked by an all-reduce of the rank ids."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import torch
from accelerate import Accelerator

from tests.conftest import REPO, tiny_recipe, write_recipe
from training.launch import LaunchError, check_world, refuse_lone_worker


@dataclass
class _Group:
    """One process's view of a process group: the size Accelerate reports, its own rank, and the ranks that really
    take part in a collective (a sum over them is what the all-reduce returns)."""

    num_processes: int
    process_index: int
    ranks: list[int]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def reduce(self, tensor: torch.Tensor, reduction: str) -> torch.Tensor:
        assert reduction == "sum" and tensor.tolist() == [1, self.process_index]
        return sum(torch.tensor([1, r]) for r in self.ranks)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No launcher's variables, whatever the shell running the tests exported."""
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PMI_SIZE",
                "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):  # fmt: skip
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_check_world_counts_every_process_of_the_group():
    assert check_world(_Group(num_processes=2, process_index=1, ranks=[0, 1])) == 2
    assert check_world(_Group(num_processes=8, process_index=5, ranks=list(range(8)))) == 8


@pytest.mark.parametrize(
    "group, answered",
    [
        (_Group(num_processes=2, process_index=0, ranks=[0, 0]), "2 process(es) with rank ids summing to 0"),
        (_Group(num_processes=3, process_index=1, ranks=[0, 1]), "2 process(es) with rank ids summing to 1"),
    ],
    ids=["two-rank-0s", "one-missing"],
)
def test_check_world_refuses_a_group_that_is_not_the_one_launched(group, answered):
    with pytest.raises(LaunchError) as e:
        check_world(group)
    message = str(e.value)
    assert answered in message and "--machine_rank" in message and "\n" not in message


def test_check_world_of_a_real_single_process_accelerator(clean_accelerate, env):
    assert check_world(Accelerator(cpu=True)) == 1


def test_a_worker_without_world_size_or_in_its_group_is_let_through(env):
    refuse_lone_worker(_Group(num_processes=1, process_index=0, ranks=[0]))
    env.setenv("WORLD_SIZE", "1")
    refuse_lone_worker(_Group(num_processes=1, process_index=0, ranks=[0]))
    env.setenv("WORLD_SIZE", "2")
    refuse_lone_worker(_Group(num_processes=2, process_index=1, ranks=[0, 1]))


def test_a_lone_worker_is_refused_with_the_launch_that_fixes_it(env):
    env.setenv("WORLD_SIZE", "16")
    with pytest.raises(LaunchError) as e:
        refuse_lone_worker(_Group(num_processes=1, process_index=0, ranks=[0]))
    message = str(e.value)
    assert message.startswith("WORLD_SIZE=16 in the environment, but Accelerate started no process group (LOCAL_RANK")
    assert "`accelerate launch --multi_gpu --num_processes 16 -m training.train ...`" in message
    assert "\n" not in message


def test_accelerate_leaves_a_worker_alone_when_an_mpi_size_shadows_world_size(clean_accelerate, env):
    # On the CPU, Accelerate starts gloo when LOCAL_RANK is set or the first world size it finds among PMI_SIZE,
    # OMPI_COMM_WORLD_SIZE, MV2_COMM_WORLD_SIZE and WORLD_SIZE is > 1; on a GPU only when LOCAL_RANK is set.
    env.setenv("WORLD_SIZE", "2")
    env.setenv("PMI_SIZE", "1")
    acc = Accelerator(cpu=True)
    assert acc.num_processes == 1
    with pytest.raises(LaunchError, match=r"\(LOCAL_RANK is unset; PMI_SIZE=1 is read first\)"):
        refuse_lone_worker(acc)


def test_a_lone_worker_stops_before_writing_anything(tiny_shapes, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tiny_shapes, tmp_path / "run", data={"num_workers": 0}))
    launcher = ("LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "OMPI_COMM_WORLD_SIZE")
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    proc = subprocess.run(
        [sys.executable, "-m", "training.train", str(recipe)], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**env, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "RANK": "1", "PMI_SIZE": "1"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[-1].startswith("error: WORLD_SIZE=2 in the environment"), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "training " not in proc.stdout
    assert not (tmp_path / "run").exists()
