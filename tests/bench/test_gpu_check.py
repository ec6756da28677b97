"""bench/gpu_check.py: every row of its table at tiny shapes on the CPU (the torchrun FSDP2 launch included), and
the peak-FLOP/s lookup its MFU rests on."""

from __future__ import annotations

import json
import re

from bench.gpu_check import CHECKS, mfu, peak_flops
from tests.conftest import run_cli


def test_tiny_cpu_run_prints_every_row_with_numbers(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = run_cli("bench/gpu_check.py", "--device", "cpu", "--tiny", "--out", str(out), timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("device: ") and "; torch " in lines[0]
    rows = {cells[1].strip(): cells for cells in (line.split("|") for line in lines if line.startswith("| "))}
    for check in CHECKS:
        assert check in rows, done.stdout
        figure = float(rows[check][3])  # check, setup, figure, unit, MFU
        assert figure > 0 and re.fullmatch(r"[0-9.e+-]+", rows[check][3].strip())
    assert rows[CHECKS[0]][5].strip() == "n/a (unknown peak)"  # a CPU has no entry in the peak table
    assert "FSDP2 over 2 CPU processes" in rows[CHECKS[1]][2]
    saved = json.loads(out.read_text())
    assert [r["check"] for r in saved["rows"]] == list(CHECKS)
    assert saved["rows"][0]["step_flops"] > 0


def test_peak_lookup_and_mfu():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("NVIDIA L4") is None
    # 1e12 FLOPs a step of 100 samples at 989 samples/s on 1 device: 9.89e12 FLOP/s, 1% of 989e12.
    assert mfu(10**12, 989.0, 100, 1, 989e12) == "1.0%"
    assert mfu(10**12, 2 * 989.0, 100, 2, 989e12) == "1.0%"  # per device
    assert mfu(10**12, 989.0, 100, 1, None) == "n/a (unknown peak)"
