"""eval.index and multimodal.evaluation.index: exact search equals brute force over the same CLIP's embeddings; a
build killed mid-way resumes without embedding its finished batches again and gives the index an uninterrupted
build gives; approximate search finds the exact top 10; refusals are one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eval.index import main
from multimodal import get_tokenizer, load_model_and_transforms
from multimodal.config import ConfigError
from multimodal.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from multimodal.evaluation.index import EmbeddingIndex, IndexSpec, build_faiss_index, open_collection
from multimodal.models import create_model
from multimodal.runs import write_run
from tests.conftest import REPO, TINY_CLIP


def write_spread_clip(path: Path, seed: int = 0) -> Path:
    """A tiny CLIP run whose random weights are wide enough that different images get different embeddings (at the
    default initialisation every image of a 1-block tower embeds within 1e-4 cosine of every other)."""
    torch.manual_seed(seed)
    model = create_model(TINY_CLIP["name"], **TINY_CLIP["args"])
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.3)
    config = {
        "task": {"name": "clip"}, "model": TINY_CLIP,
        "data": {"image_size": 32, "mean": list(OPENAI_CLIP_MEAN), "std": list(OPENAI_CLIP_STD)},
    }  # fmt: skip
    return write_run(path, config, model)


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_spread_clip(tmp_path_factory.mktemp("index") / "clip")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 random images (png, jpg, webp; RGB and RGBA; several sizes) in nested folders, a corrupt .jpg, a text file
    and a hidden image, which are not part of the collection."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(12):
        where = root / ("a/b" if i % 3 == 0 else "a" if i % 3 == 1 else "")
        where.mkdir(parents=True, exist_ok=True)
        mode, suffix = [("RGB", "png"), ("RGB", "jpg"), ("RGBA", "webp")][i % 3]
        size = (24 + 4 * i, 40 - i)
        pixels = rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
        Image.fromarray(pixels, mode).save(where / f"img{i:02d}.{suffix}")
    (root / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"skipped unseen")
    return root


@pytest.fixture
def one_thread():
    """The CLIs here run on one thread (--threads 1), as the killed build's subprocess does; restored after."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def build(*args: str) -> int:
    return main(["build", *args, "--threads", "1", "--workers", "0"])


def test_exact_search_equals_brute_force_for_text_and_image_queries(clip_run, folder, tmp_path, capsys, one_thread):
    out = tmp_path / "index"
    assert build("--checkpoint", str(clip_run), "--dataset", str(folder), "--out", str(out), "--batch-size", "5") == 0
    printed = capsys.readouterr().out
    assert "embedded 12 images in this run, 0 before it" in printed
    assert "a/broken.jpg: 1 corrupt image" in printed  # reported, skipped, counted
    assert sorted(p.name for p in out.iterdir()) == ["index.faiss", "index.json", "items.json"]  # chunks removed

    # brute force: the same CLIP on the same files, through the run's own preprocessing
    model, preprocess = load_model_and_transforms(clip_run)
    files = sorted(p for p in folder.rglob("img*"))
    keys = [p.relative_to(folder).as_posix() for p in files]
    with torch.no_grad():
        images = model.encode_image(torch.stack([preprocess(Image.open(p)) for p in files]), normalize=True)
    index = EmbeddingIndex.load(out)
    assert len(index) == 12 and index.items["key"] == keys
    assert index.items["path"] == [str(p.resolve()) for p in files] and set(index.items["caption"]) == {None}
    torch.testing.assert_close(torch.from_numpy(index.index.reconstruct_n(0, 12)), images, atol=1e-5, rtol=0)

    texts = ["a red circle", "a photo of noise", "two blue squares"]
    queries = [Image.open(files[4]), Image.new("RGB", (50, 30), "orange"), Image.open(files[2])]
    with torch.no_grad():
        text_sim = model.encode_text(get_tokenizer(model)(texts), normalize=True) @ images.T  # (3, 12)
        image_sim = model.encode_image(torch.stack([preprocess(q) for q in queries]), normalize=True) @ images.T
    k = 5
    for sim, hits in ((text_sim, index.query_text(texts, k)), (image_sim, index.query_image(queries, k))):
        for row, row_hits in zip(sim, hits, strict=True):
            expected = row.topk(k)
            assert [h.rank for h in row_hits] == [1, 2, 3, 4, 5]
            assert [h.key for h in row_hits] == [keys[i] for i in expected.indices]
            np.testing.assert_allclose([h.score for h in row_hits], expected.values.numpy(), atol=1e-5, rtol=0)
    assert index.query_image(queries[:1], 1)[0][0].key == keys[4]  # an image of the collection finds itself
    assert index.query_image(queries[:1], 1)[0][0].score == pytest.approx(1.0, abs=1e-5)
    assert len(index.search(images[:2], 50)[1]) == 12  # k past the collection: all of it
    with pytest.raises(ValueError, match="holds 32-d vectors, got 8-d"):
        index.search(np.zeros((1, 8)), 3)

    # query prints a table, or JSON with the same hits
    assert main(["query", "--index", str(out), "--text", texts[0], "-k", "3", "--json", "--threads", "1"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert [h["key"] for h in answer["queries"][0]["hits"]] == [keys[i] for i in text_sim[0].topk(3).indices]
    assert main(["query", "--index", str(out), "--image", str(files[4]), "-k", "2", "--threads", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == f"image {files[4]}" and table[2].split()[:3] == ["1", "1.0000", keys[4]]

    # a finished index is refused without --force; with it, rebuilt (here approximate: IVF on 12 vectors has one
    # cell, searched whole, so its hits are the exact ones)
    assert build("--checkpoint", str(clip_run), "--dataset", str(folder), "--out", str(out)) == 2
    assert "holds a finished index; pass --force" in capsys.readouterr().err
    assert build("--checkpoint", str(clip_run), "--dataset", str(folder), "--out", str(out), "--kind", "ivf",
                 "--force") == 0  # fmt: skip
    ivf = EmbeddingIndex.load(out)
    assert ivf.info["index"]["kind"] == "ivf" and ivf.info["index"]["nlist"] == 1
    assert [h.key for h in ivf.query_text(texts, k)[0]] == [keys[i] for i in text_sim[0].topk(k).indices]
    with pytest.raises(ValueError, match="ef_search applies to an hnsw index"):
        EmbeddingIndex.load(out, ef_search=10)


def test_refusals_are_one_line(clip_run, folder, tmp_path, capsys, one_thread):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    assert (
        build("--checkpoint", str(clip_run), "--dataset", str(tmp_path / "empty"), "--out", str(tmp_path / "o")) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "holds no images (jpg, jpeg, png, webp, searched recursively)" in err
    assert err.count("\n") == 1 and not (tmp_path / "o").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("someone's file")
    assert build("--checkpoint", str(clip_run), "--dataset", str(folder), "--out", str(tmp_path / "taken")) == 2
    assert "taken exists and holds no index being built; choose a new or empty --out folder" in capsys.readouterr().err
    assert build("--checkpoint", str(clip_run), "--dataset", "no-such-card", "--out", str(tmp_path / "o")) == 2
    assert "unknown dataset 'no-such-card'" in capsys.readouterr().err
    assert build("--checkpoint", str(tmp_path / "taken"), "--dataset", str(folder), "--out", str(tmp_path / "o")) == 2
    assert "is not a run directory" in capsys.readouterr().err
    assert main(["query", "--index", str(tmp_path / "taken"), "--text", "a", "--threads", "1"]) == 2
    assert "is not an embedding index (no index.json)" in capsys.readouterr().err


def test_build_killed_mid_way_resumes_where_it_stopped(clip_run, tiny_shapes, tmp_path, capsys, one_thread):
    common = ["--checkpoint", str(clip_run), "--dataset", str(tiny_shapes), "--split", "test", "--batch-size", "1"]
    # a build in a subprocess, killed (with its decoding worker) once its first batch is on disk
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "eval.index", "build", *common, "--out", str(out), "--threads", "1"], cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / "chunks" / "000000.safetensors").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    done = sorted((out / "chunks").glob("*.safetensors"))
    assert 1 <= len(done) < 96 and not (out / "index.json").exists()

    # resuming with another CLIP, another split or another batch size is refused, and changes nothing
    other = write_spread_clip(tmp_path / "other-clip", seed=1)
    assert build("--checkpoint", str(other), *common[2:], "--out", str(out)) == 2
    assert "was started with the CLIP of" in capsys.readouterr().err
    assert build(*common[:5], "train", "--out", str(out)) == 2
    assert "(split test), not" in capsys.readouterr().err
    assert build(*common[:6], "--batch-size", "3", "--out", str(out)) == 2
    assert "started with batch size 1" in capsys.readouterr().err
    assert sorted((out / "chunks").glob("*.safetensors")) == done

    # the rerun embeds only what the killed build had not, and gives the index of an uninterrupted build
    assert build(*common[:6], "--out", str(out)) == 0
    before = len(done)
    printed = capsys.readouterr().out
    assert f"resuming {out}: {before} batches ({before} images) embedded before" in printed
    assert f"embedded {96 - before} images in this run, {before} before it" in printed
    assert build(*common, "--out", str(tmp_path / "whole")) == 0
    whole, resumed = EmbeddingIndex.load(tmp_path / "whole"), EmbeddingIndex.load(out)
    assert resumed.items == whole.items and len(resumed) == 96
    assert np.array_equal(resumed.index.reconstruct_n(0, 96), whole.index.reconstruct_n(0, 96))
    hit = resumed.query_text(["a red circle"], 1)[0][0]  # shards give each hit its caption and label (colour)
    assert hit.caption and hit.label in ("red", "green", "blue", "yellow", "purple", "orange")
    assert hit.path.endswith(".tar")


def test_a_dataset_is_a_card_shards_or_a_folder_of_images(tiny_shapes, folder):
    card = open_collection(tiny_shapes)  # its test split, by default
    assert (card.split, card.num_items, card.text_key, card.label_names[0]) == ("test", 96, "txt", "red")
    shards = [Path(u).resolve() for u in card.urls]
    assert [p.name for p in shards] == ["000000.tar", "000001.tar"]
    pattern = open_collection(f"{shards[0].parent}/{{000000..000001}}.tar")  # a brace pattern: its one split
    assert pattern.split == "train" and pattern.num_items == 96 and [Path(u) for u in pattern.urls] == shards
    split_folders = open_collection(shards[0].parent.parent)  # train/, test/, heldout/ of shards
    assert split_folders.split == "test" and [Path(u) for u in split_folders.urls] == shards
    images = open_collection(folder)  # every image file, the corrupt one too (the build skips it), by path
    assert images.num_items == 13 and [i["__key__"] for i in images.items[:4]] == [
        "a/b/img00.png", "a/b/img03.png", "a/b/img06.png", "a/b/img09.png"
    ]  # fmt: skip
    assert images.items[4]["__key__"] == "a/broken.jpg" and images.items[-1]["__key__"] == "img11.webp"
    with pytest.raises(ValueError, match="is an image folder, which has no splits"):
        open_collection(folder, "test")
    with pytest.raises(ConfigError, match="has no split 'val'"):
        open_collection(tiny_shapes, "val")


def test_approximate_search_finds_the_exact_top_10():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 32)).astype(np.float32)
    data = centres[rng.integers(0, 40, 4000)] + rng.standard_normal((4000, 32)).astype(np.float32) / 32**0.5
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    queries = data[:200] + 0.05 * rng.standard_normal((200, 32)).astype(np.float32)
    truth = (torch.from_numpy(queries) @ torch.from_numpy(data).T).topk(10).indices.numpy()
    exact = build_faiss_index(data, IndexSpec())
    assert np.array_equal(exact.search(queries, 10)[1], truth)
    for spec, at_least in (
        (IndexSpec("ivf", nlist=64, nprobe=8), 0.95),
        (IndexSpec("hnsw", m=16, ef_search=64), 0.95),
    ):
        found = build_faiss_index(data, spec).search(queries, 10)[1]
        recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
        assert recall >= at_least, (spec, recall)
    assert IndexSpec("ivf").resolved(4000) == IndexSpec("ivf", nlist=102, nprobe=8)  # min(4 sqrt(N), N / 39)
    with pytest.raises(ValueError, match="nlist 500 needs at least 500 vectors"):
        IndexSpec("ivf", nlist=500).resolved(100)


def test_help_answers_without_importing_torch_or_faiss():
    for args in (["--help"], ["build", "--help"], ["query", "--help"]):
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "eval.index", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0 and done.stdout.startswith("usage: python -m eval.index")
        imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
        assert not {"torch", "faiss", "PIL", "multimodal.evaluation"} & imported
