"""bench/curves.py: the table of several runs' curves, and the plot against wall-clock minutes."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from bench import curves


def write_run(path, evals: list[tuple[int, float, float, float | None]]):
    """A run folder whose metrics.jsonl has a loss every 10 steps and the given (step, test, heldout, seconds)."""
    path.mkdir()
    rows = [{"step": s, "train/loss": 5.0 - s / 100} for s in range(10, 101, 10)]
    for step, test, heldout, seconds in evals:
        row = {"step": step, "eval/test_top1": test, "eval/heldout_top1": heldout}
        if seconds is not None:
            row["time/wall_seconds"] = seconds
        rows.append(row)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_plot_puts_each_evaluation_at_its_minutes(tmp_path, capsys):
    before = write_run(tmp_path / "before", [(50, 0.4, 0.3, 120.0), (100, 0.9, 0.7, 240.0)])
    after = write_run(tmp_path / "after", [(50, 0.6, 0.5, 60.0), (100, 0.95, 0.8, 120.0)])
    assert curves.minutes_curve(curves.read_metrics(after), "eval/test_top1") == [(1.0, 0.6), (2.0, 0.95)]
    out = tmp_path / "plot.png"
    curves.main([str(before), str(after), "--every", "50", "--plot", str(out), "--label", "old", "--label", "new",
                 "--goal", "0.98"])  # fmt: skip
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in capsys.readouterr().out.splitlines()]
    assert ["100", "4.2000", "4.2000", "0.9000", "0.7000", "0.9500", "0.8000"] in rows
    assert Image.open(out).size == (720, 440)


def test_runs_without_wall_times_cannot_be_plotted(tmp_path):
    old = write_run(tmp_path / "old", [(100, 0.9, 0.7, None)])
    with pytest.raises(SystemExit, match="logged no eval/test_top1 with time/wall_seconds"):
        curves.main([str(old), "--plot", str(tmp_path / "p.png")])
    assert not (tmp_path / "p.png").exists()


def test_one_label_per_run(tmp_path):
    run = write_run(tmp_path / "r", [(100, 0.9, 0.7, 60.0)])
    with pytest.raises(SystemExit):
        curves.main([str(run), "--plot", str(tmp_path / "p.png"), "--label", "a", "--label", "b"])
