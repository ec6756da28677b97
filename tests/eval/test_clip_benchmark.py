"""CLIP_benchmark, unchanged, on this project's data and exported CLIP: it reads the exported folders as this project
reads them, builds the same zero-shot classifier, computes the same retrieval recalls, and its command line's figures
equal eval.zeroshot's and eval.retrieval's on the same data.

Run with the interpreter that has clip-benchmark (``.venv/transformer-lens/bin/python``). CLIP_benchmark on a CPU,
offline, needs only its own flags: ``--no_amp`` (its autocast would compute in bfloat16 on the CPU), ``--num_workers
0`` (one ordered pass, no worker processes), a small ``--batch_size`` and ``--recall_k 1 5 10``; it picks the CPU
itself when no GPU is present, and a ``local-dir:`` model reads no hub (HF_HUB_OFFLINE=1 makes sure). Its zero-shot
accuracy needs numpy < 2.4 (LAION-AI/CLIP_benchmark#147).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eval.retrieval import main as retrieval_main
from eval.zeroshot import main as zeroshot_main
from multimodal import load_checkpoint
from multimodal.data.benchmark import BenchmarkDecoder, card_prompts, export_benchmark, load_dataset_card
from multimodal.data.transforms import ImageTransform, SampleDecoder
from multimodal.evaluation import eval_stream, retrieval_evaluate
from multimodal.pipelines.zeroshot import ZeroShotClassifier
from multimodal.runs import get_tokenizer
from tests.conftest import run_cli, train_recipe
from tests.test_load_transforms import write_clip_run
from tests.training.test_clip_task import clip_recipe

pytestmark = pytest.mark.clip_benchmark
builder = pytest.importorskip("clip_benchmark.datasets.builder")
zeroshot_classification = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
zeroshot_retrieval = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")

TOLERANCE = 0.005
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@torch.no_grad()
@pytest.mark.filterwarnings(r"ignore:WebDataset\(shardshuffle=\.\.\.\) is None")  # CLIP_benchmark's own call
def test_clip_benchmark_reads_the_export_and_builds_our_zero_shot_classifier(tiny_shapes, tmp_path, offline):
    run, out = write_clip_run(tmp_path / "clip"), tmp_path / "shapes"
    export_benchmark(tiny_shapes, out, label="color")  # six classes: the classifier is one text batch a class
    model = load_checkpoint(run).eval()
    tokenizer = get_tokenizer(model)
    transform = ImageTransform(image_size=32)
    dataset = builder.build_wds_dataset("shapes", transform=transform, split="test", data_dir=str(out))
    classnames, templates = card_prompts(load_dataset_card(out), "cls")
    assert dataset.classes == classnames and dataset.templates == [t.replace("{}", "{c}") for t in templates]

    theirs = zeroshot_classification.zero_shot_classifier(
        model, tokenizer, dataset.classes, dataset.templates, "cpu", amp=False
    )
    ours = ZeroShotClassifier(model, tokenizer, classnames, templates)
    torch.testing.assert_close(theirs, ours.weights, atol=1e-6, rtol=0)
    loader = torch.utils.data.DataLoader(dataset.batched(40), batch_size=None, num_workers=0)  # as its cli.py does
    logits, target = zeroshot_classification.run_classification(model, theirs, loader, "cpu", amp=False)
    decoder = BenchmarkDecoder(SampleDecoder(image_size=32, label_key="cls"))
    batches = [b for b in eval_stream(load_dataset_card(out), "test", decoder=decoder, batch_size=40) if b["size"]]
    assert torch.equal(target, torch.cat([b["label"] for b in batches]))  # same samples, same order
    assert torch.equal(torch.cat([images for images, _ in loader]), torch.cat([b["image"] for b in batches]))
    assert torch.equal(logits.argmax(dim=1), torch.cat([ours(b["image"]) for b in batches]).argmax(dim=1))


@torch.no_grad()
def test_retrieval_recalls_equal_clip_benchmarks_own_function(tiny_shapes, tmp_path, offline):
    """CLIP_benchmark's zeroshot_retrieval.evaluate on this project's model and batches, against ours."""
    model = load_checkpoint(write_clip_run(tmp_path / "clip")).eval()
    tokenizer = get_tokenizer(model)
    export_benchmark(tiny_shapes, tmp_path / "shapes_retrieval", kind="retrieval")
    card = load_dataset_card(tmp_path / "shapes_retrieval")
    decoder = BenchmarkDecoder(SampleDecoder(image_size=32, image_key=card.image_key), captions=True)
    batches = [b for b in eval_stream(card, "test", decoder=decoder, batch_size=40) if b["size"]]
    ours = retrieval_evaluate(model, tokenizer, batches)
    loader = [(b["image"], b["text"]) for b in batches]
    theirs = zeroshot_retrieval.evaluate(model, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
    assert theirs == {key: pytest.approx(ours[key], abs=1e-6) for key in theirs}
    assert ours["num_pairs"] == 480 and ours["image_to_text_R@1"] >= ours["text_retrieval_recall@1"]


# -- the command lines, end to end ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bench(tiny_shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CLIP trained on the tiny shapes, exported to open_clip by ``python -m multimodal.export``, and the
    test split in both CLIP_benchmark layouts (shapes: classification, shapes_retrieval: retrieval)."""
    root = tmp_path_factory.mktemp("clip-benchmark")
    recipe = clip_recipe(tiny_shapes, root / "clip", train={"steps": 24, "checkpoint_every": 0})
    recipe["task"]["zeroshot_splits"] = []
    recipe["data"].update(eval_split=None, label="color_shape")
    train_recipe(root, recipe)
    done = run_cli(
        "-m", "multimodal.export", "--checkpoint", str(root / "clip"), "--to", "open_clip", "--out",
        str(root / "open_clip"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    export_benchmark(tiny_shapes, root / "shapes", label="color_shape")
    export_benchmark(tiny_shapes, root / "shapes_retrieval", label="color_shape", kind="retrieval")
    return root


def _clip_benchmark(root: Path, dataset: str, task: str) -> subprocess.Popen:
    """``clip_benchmark eval`` of the exported CLIP on ``root/dataset``, started (its JSON: ``root/<task>.json``)."""
    command = [
        str(Path(sys.executable).with_name("clip_benchmark")), "eval", "--model", f"local-dir:{root / 'open_clip'}",
        "--pretrained", "local", "--dataset", f"wds/{dataset}", "--dataset_root", str(root / dataset), "--task", task,
        "--recall_k", "1", "5", "10", "--no_amp", "--num_workers", "0", "--batch_size", "32", "--quiet",
        "--output", str(root / f"{task}.json"),
    ]  # fmt: skip
    env = {**os.environ, **OFFLINE}
    return subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_clip_benchmark_on_the_exports_matches_eval_zeroshot_and_eval_retrieval(
    bench, tiny_shapes, offline, clean_accelerate
):
    import numpy

    if tuple(int(p) for p in numpy.__version__.split(".")[:2]) >= (2, 4):
        pytest.fail(
            f"clip-benchmark's zero-shot accuracy fails under numpy {numpy.__version__} (float() of a 1-element "
            "array; LAION-AI/CLIP_benchmark#147): install numpy<2.4 beside it (pip install 'numpy<2.4')"
        )
    tasks = {"zeroshot_classification": "shapes", "zeroshot_retrieval": "shapes_retrieval"}
    runs = {task: _clip_benchmark(bench, dataset, task) for task, dataset in tasks.items()}  # beside ours
    ours = {
        "zs": ["--dataset", str(tiny_shapes), "--label", "color_shape"],
        "r": ["--dataset", f"wds:{bench / 'shapes_retrieval'}"],
    }
    common = ["--checkpoint", str(bench / "clip"), "--split", "test", "--workers", "0", "--threads", "1"]
    assert zeroshot_main([*common, *ours["zs"], "--out", str(bench / "ours-zs.json")]) == 0
    assert retrieval_main([*common, *ours["r"], "--out", str(bench / "ours-r.json")]) == 0
    for task, proc in runs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{task}: {err[-3000:]}"
    theirs = {t: json.loads((bench / f"{t}.json").read_text())["metrics"] for t in runs}
    zs = json.loads((bench / "ours-zs.json").read_text())["splits"]["test"]
    retrieval = json.loads((bench / "ours-r.json").read_text())

    cls = theirs["zeroshot_classification"]
    assert abs(cls["acc1"] - zs["top1"]) <= TOLERANCE, (cls, zs)
    assert abs(cls["acc5"] - zs["top5"]) <= TOLERANCE, (cls, zs)
    assert abs(cls["mean_per_class_recall"] - zs["mean_per_class_recall"]) <= TOLERANCE, (cls, zs)
    assert theirs["zeroshot_retrieval"].keys() == {
        f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)
    }
    for key, value in theirs["zeroshot_retrieval"].items():
        assert abs(value - retrieval[key]) <= TOLERANCE, (key, value, retrieval[key])
