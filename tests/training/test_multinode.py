"""Two machines on one host: two ``accelerate launch``es, one process each, meet at 127.0.0.1 as machine 0 and
machine 1 of ``--num_machines 2`` and train one run at world size 2, checked from inside the run by an all-reduce
of the rank ids."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, tiny_recipe, write_recipe
from training.launch import free_port

STEPS, BATCH = 4, 16


def _machine(rank: int, port: int, recipe: Path, *flags: str) -> subprocess.Popen:
    """One machine's launcher: ``accelerate launch`` of one worker, rank ``rank`` of 2 machines."""
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    command = [
        accelerate, "launch", "--multi_gpu", "--num_machines", "2", "--num_processes", "2", "--machine_rank",
        str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), *flags, "--mixed_precision",
        "no", "--dynamo_backend", "no", "-m", "training.train", str(recipe), "train.record_keys=true",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# Without --same_network torchrun meets at a rendezvous endpoint (what configs/slurm/train.sbatch does);
# with it, at MASTER_ADDR:MASTER_PORT (configs/accelerate/multi-gpu.yaml's same_network: true).
@pytest.mark.parametrize("flags", [(), ("--same_network",)], ids=["rdzv-endpoint", "same-network"])
def test_two_machines_train_one_run_at_world_size_two(tiny_shapes, tmp_path, flags):
    run = tmp_path / "run"
    recipe = tiny_recipe(
        tiny_shapes, run, data={"batch_size": BATCH, "num_workers": 0}, train={"steps": STEPS, "checkpoint_every": 0}
    )
    recipe = write_recipe(tmp_path / "r.yaml", recipe)
    port = free_port()
    machines = [_machine(rank, port, recipe, *flags) for rank in range(2)]
    try:
        outputs = [m.communicate(timeout=240) for m in machines]
    finally:
        for m in machines:
            if m.poll() is None:
                m.kill()
                m.communicate()
    for m, (out, err) in zip(machines, outputs, strict=True):
        assert m.returncode == 0 and "Traceback" not in err, err[-3000:]
        # Each machine's worker is its machine's main process and prints what the all-reduce of the rank ids found.
        assert "process group checked: 2 processes answered an all-reduce of their rank ids" in out, out + err[-3000:]
        assert f"for {STEPS} steps on 2 process(es)" in out
    assert [f"run {run}: " in out for out, _ in outputs] == [True, False]  # one run, written by machine 0 alone
    results = json.loads((run / "results.json").read_text())
    assert (results["num_processes"], results["distributed_type"]) == (2, "MULTI_CPU")
    assert (results["step"], results["samples"]) == (STEPS, 2 * STEPS * BATCH)
    keys = [(run / "keys" / f"rank-{r}.txt").read_text().splitlines() for r in range(2)]
    assert len(keys[0]) == len(keys[1]) == STEPS * BATCH
    assert not {k.split("\t")[1] for k in keys[0]} & {k.split("\t")[1] for k in keys[1]}  # each machine its share
