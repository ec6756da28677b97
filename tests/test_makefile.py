"""The Makefile's `beside` (two demo jobs at a time): a failure of either job fails the recipe, and the background
job's output goes to its log, whose last lines are shown."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def beside(tmp_path, background: str, foreground: str) -> subprocess.CompletedProcess:
    log = tmp_path / "bg.log"
    rule = f"check: ; @$(call beside,{log},{background},{foreground})"
    return subprocess.run(["make", "-s", "-f", str(REPO / "Makefile"), "--eval", rule, "check"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_both_jobs_run_and_the_background_log_is_shown(tmp_path):
    out = beside(tmp_path, "sh -c 'echo from-the-background; sleep 1'", "echo from-the-foreground")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "bg.log").read_text() == "from-the-background\n"
    assert "from-the-foreground" in out.stdout and out.stdout.rstrip().endswith("from-the-background")


@pytest.mark.parametrize(("background", "foreground"), [("false", "true"), ("true", "false"), ("false", "false")])
def test_either_job_failing_fails_the_recipe(tmp_path, background, foreground):
    out = beside(tmp_path, background, foreground)
    assert out.returncode != 0
    assert ("error: the job beside failed; see" in out.stderr) == (background == "false")
