"""eval.zeroshot: with fewer than five classes the printed table and the JSON name the same top-k; CLIP_benchmark's
metrics; a CLIP_benchmark folder read as the card it was exported from."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from eval.zeroshot import format_results, main
from multimodal.data.benchmark import export_benchmark
from multimodal.evaluation import classification_metrics
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


def test_metrics_are_clip_benchmarks_acc1_acc5_and_mean_per_class_recall():
    """CLIP_benchmark's zero-shot metrics (clip_benchmark.metrics.zeroshot_classification.evaluate): acc1 and acc5 from
    the top-k of the logits, mean_per_class_recall as scikit-learn's balanced accuracy of the argmax."""
    from sklearn.metrics import balanced_accuracy_score

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 12, generator=gen)
    target = torch.randint(0, 11, (300,), generator=gen)  # class 11 never occurs: it only draws predictions
    target[:40] = logits[:40].argmax(dim=1)  # some right answers, unevenly spread over the classes
    ours = classification_metrics(logits.topk(5, dim=1).indices, target, num_classes=12)
    top5 = logits.topk(5, dim=1).indices
    acc1 = (logits.argmax(dim=1) == target).float().mean().item()
    acc5 = (top5 == target[:, None]).any(dim=1).float().mean().item()
    assert ours["top1"] == pytest.approx(acc1) and ours["top5"] == pytest.approx(acc5)
    assert ours["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(target, logits.argmax(dim=1)))


def test_a_clip_benchmark_folder_gives_the_figures_of_its_source(tiny_shapes, tmp_path, capsys, clean_accelerate):
    run, bench = write_clip_run(tmp_path / "clip"), tmp_path / "shapes-bench"
    export_benchmark(tiny_shapes, bench, label="color_shape")
    common = ["--checkpoint", str(run), "--split", "test", "--workers", "0", "--batch-size", "40"]
    assert main([*common, "--dataset", str(tiny_shapes), "--label", "color_shape", "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--dataset", f"wds:{bench}", "--out", str(tmp_path / "b")]) == 0
    source, exported = (json.loads((tmp_path / name).read_text()) for name in ("a", "b"))
    assert (exported["dataset"], exported["label"]) == ("shapes-bench", "cls")
    assert exported["splits"] == source["splits"] and source["splits"]["test"]["num_samples"] == 96
    assert "zero-shot shapes-bench:cls (36 classes)" in capsys.readouterr().out
