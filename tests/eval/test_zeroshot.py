"""eval.zeroshot: with fewer than five classes the printed table and the JSON name the same top-k."""

from __future__ import annotations

import json

from PIL import Image

from eval.zeroshot import format_results, main
from tests.test_load_transforms import write_clip_run

CLASSES = {"red_circle": "red", "blue_square": "blue", "green_star": "green"}


def test_three_classes_print_and_write_top3(tmp_path, capsys, clean_accelerate):
    folder = tmp_path / "three"
    for name, colour in CLASSES.items():
        (folder / "test" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (36, 32), colour).save(folder / "test" / name / f"{i}.png")
    run, out = write_clip_run(tmp_path / "clip"), tmp_path / "zs.json"
    argv = ["--checkpoint", str(run), "--dataset", str(folder), "--workers", "0", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "zero-shot three:label (3 classes)"
    assert printed[1].split() == ["split", "top1", "(chance)", "top3", "(chance)", "mpcr", "n"]
    metrics = json.loads(out.read_text())["splits"]["test"]
    assert "top3" in metrics and "top5" not in metrics and "chance_top5" not in metrics
    assert metrics["top3"] == 1.0 and metrics["chance_top3"] == 1.0 and metrics["num_samples"] == 6
    row = printed[2].split()
    assert row[0] == "test" and float(row[3]) == metrics["top3"] and float(row[4]) == metrics["chance_top3"]
    assert format_results({"test": metrics}, "t").splitlines()[1] == printed[1]


def test_five_or_more_classes_keep_top5():
    metrics = {"top1": 0.5, "top5": 0.9, "mean_per_class_recall": 0.5, "num_samples": 10}
    metrics.update(chance_top1=0.1, chance_top5=0.5)
    header, row = format_results({"test": metrics}, "t").splitlines()[1:]
    assert header.split()[3] == "top5" and row.split()[3:5] == ["0.9000", "0.5000"]
