"""scripts/side_by_side.sh: both commands run at once, the second's output goes to its log, a failure stops both."""

from __future__ import annotations

import subprocess
import time

from tests.conftest import REPO

SCRIPT = str(REPO / "scripts" / "side_by_side.sh")


def _run(log, first: str, second: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    done = subprocess.run(["bash", SCRIPT, str(log), first, second], capture_output=True, text=True, timeout=60)
    return done, time.perf_counter() - start


def test_both_run_at_once_and_the_second_is_logged(tmp_path):
    log = tmp_path / "sub" / "second.log"
    done, seconds = _run(log, "sleep 1; echo first done", "sleep 1; echo second done")
    assert done.returncode == 0, done.stderr
    assert "first done" in done.stdout and log.read_text().strip() == "second done"
    assert "second done" in done.stdout  # its last lines are shown when it ends
    assert seconds < 1.9  # side by side, not one after the other (2 s)


def test_a_failing_second_command_fails_the_whole(tmp_path):
    done, _ = _run(tmp_path / "s.log", "true", "echo oops; exit 3")
    assert done.returncode == 3
    assert "failed (exit 3)" in done.stderr and "s.log" in done.stderr


def test_a_failing_first_command_stops_the_second(tmp_path):
    marker = tmp_path / "finished"
    done, seconds = _run(tmp_path / "s.log", "sleep 0.5; exit 4", f"sleep 2; touch {marker}")
    assert done.returncode == 4 and "the second was stopped" in done.stderr and seconds < 1.9
    time.sleep(2.5)
    assert not marker.exists()  # the second command's own children were stopped too


def test_wrong_arguments_are_refused_in_one_line():
    done = subprocess.run(["bash", SCRIPT, "only-a-log"], capture_output=True, text=True, timeout=10)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "usage" in done.stderr
