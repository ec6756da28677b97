"""multimodal.data.benchmark: a card's split in CLIP_benchmark's WebDataset layout, read the way CLIP_benchmark reads
it (webdataset, its keys and files), and read back by this project's cards and decoders."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from multimodal.config import ConfigError
from multimodal.data import SampleDecoder, load_card
from multimodal.data.benchmark import (
    BenchmarkDecoder,
    benchmark_card,
    card_prompts,
    export_benchmark,
    is_benchmark_card,
    load_dataset_card,
    main,
)
from multimodal.data.shards import read_shard


def _source_samples(card_path: Path, split: str) -> list[dict]:
    card = load_card(card_path)
    return [s for url in card.shard_urls(split) for s in read_shard(Path(url))]


def _clip_benchmark_read(root: Path, split: str, second: str) -> list[tuple]:
    """What CLIP_benchmark's build_wds_dataset yields for a folder (its shard pattern, decoder and tuple keys)."""
    nshards = int((root / split / "nshards.txt").read_text())
    pattern = str(root / split / f"{{0..{nshards - 1}}}.tar")
    dataset = (
        wds.WebDataset(pattern, nodesplitter=lambda src: src, shardshuffle=False)
        .decode(wds.autodecode.ImageHandler("pil", extensions=["webp", "png", "jpg", "jpeg"]))
        .to_tuple(["webp", "png", "jpg", "jpeg"], second)
    )
    return list(dataset)


@pytest.fixture(scope="module")
def exported(tiny_shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "shapes"
    result = export_benchmark(tiny_shapes, out, label="color_shape", samples_per_shard=40)
    assert result["splits"]["test"] == {
        "samples": 96, "shards": 3, "skipped_samples": 0, "by_source": {}, "unreadable_shards": {},
    }  # fmt: skip
    return out


def test_export_is_clip_benchmarks_layout_with_the_cards_data(exported: Path, tiny_shapes: Path):
    assert sorted(p.name for p in exported.iterdir()) == [
        "classnames.txt",
        "test",
        "zeroshot_classification_templates.txt",
    ]
    assert (exported / "test" / "nshards.txt").read_text() == "3\n"
    assert [p.name for p in sorted((exported / "test").glob("*.tar"))] == ["0.tar", "1.tar", "2.tar"]
    card = load_card(tiny_shapes)
    assert (exported / "classnames.txt").read_text().splitlines() == list(card.labels["color_shape"])
    templates = (exported / "zeroshot_classification_templates.txt").read_text().splitlines()
    assert templates == [t.replace("{}", "{c}") for t in card.templates]
    assert templates[0].format(c="red circle") == "a photo of a red circle."  # CLIP_benchmark's template.format(c=)

    source = _source_samples(tiny_shapes, "test")
    read = _clip_benchmark_read(exported, "test", "cls")
    assert len(read) == len(source) == 96
    for (image, cls), raw in zip(read, source, strict=True):
        meta = json.loads(raw["json"])
        assert cls == meta["color_shape"]
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(io.BytesIO(raw["png"])).convert("RGB")))
    shard = read_shard(exported / "test" / "0.tar")
    assert [s["__key__"] for s in shard[:2]] == ["s0000000", "s0000001"]  # CLIP_benchmark's own key scheme
    assert shard[0]["png"] == source[0]["png"]  # PNG bytes copied as they are
    assert shard[0]["txt"].decode().splitlines() == json.loads(source[0]["json"])["captions"]


def test_retrieval_export_marks_its_type_and_holds_every_caption(tiny_shapes: Path, tmp_path: Path):
    out = tmp_path / "shapes_retrieval"
    result = export_benchmark(tiny_shapes, out, kind="retrieval", label="color_shape")
    assert (result["type"], result["splits"]["test"]["samples"]) == ("retrieval", 96)
    assert (out / "dataset_type.txt").read_text() == "retrieval\n"
    read = _clip_benchmark_read(out, "test", "txt")
    captions = [json.loads(s["json"])["captions"] for s in _source_samples(tiny_shapes, "test")]
    assert [text.splitlines() for _, text in read] == captions  # CLIP_benchmark: map_tuple(transform, str.splitlines)


def test_the_folder_reads_back_as_a_card_with_the_same_samples(exported: Path, tiny_shapes: Path):
    card = load_dataset_card(f"wds:{exported}")
    assert card == load_dataset_card(exported) == benchmark_card(exported) and is_benchmark_card(card)
    assert not is_benchmark_card(load_card(tiny_shapes))
    source = load_card(tiny_shapes)
    assert card.splits["test"].num_samples == 96 and card.shard_urls("test")[-1].endswith("test/2.tar")
    assert card_prompts(card, "cls") == card_prompts(source, "color_shape")  # the {c} templates read back as {}

    raw = [s for url in card.shard_urls("test") for s in read_shard(Path(url))]
    original = _source_samples(tiny_shapes, "test")
    ours = BenchmarkDecoder(SampleDecoder(image_size=32, label_key="cls"), captions=True)
    theirs = SampleDecoder(image_size=32, label_key="color_shape")
    for a, b in zip(raw[:8], original[:8], strict=True):
        got, want = ours(a), theirs(b)
        assert torch.equal(got["image"], want["image"]) and got["label"] == want["label"]
        assert got["text"] == json.loads(b["json"])["captions"]


def test_images_clip_benchmark_would_read_otherwise_are_written_as_the_rgb_we_read(tmp_path: Path):
    folder = tmp_path / "modes" / "test"
    rng = np.random.default_rng(0)
    images = {
        "rgba": Image.fromarray(rng.integers(0, 256, (12, 12, 4), dtype=np.uint8), "RGBA"),
        "grey16": Image.fromarray(rng.integers(0, 65536, (12, 12), dtype=np.uint16)),
        "rgb": Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), "RGB"),
    }
    for name, image in images.items():
        (folder / name).mkdir(parents=True)
        image.save(folder / name / "0.png")
    for image_format, kept in (("keep", {"png"}), ("webp", {"webp"})):
        out = tmp_path / f"out-{image_format}"
        export_benchmark(tmp_path / "modes", out, image_format=image_format)
        decoder = SampleDecoder(image_size=12, label_key="cls")
        folder_card = load_card(tmp_path / "modes")
        want = [decoder({"__path__": str(folder / name / "0.png"), "cls": i}) for i, name in enumerate(sorted(images))]
        raw = read_shard(out / "test" / "0.tar")
        assert {ext for s in raw for ext in s if ext not in ("__key__", "cls")} == kept
        for (image, cls), w in zip(_clip_benchmark_read(out, "test", "cls"), want, strict=True):
            assert cls == w["label"]  # CLIP_benchmark's convert("RGB") now sees the pixels to_rgb gives
            assert torch.equal(decoder({"png": _png(image), "cls": cls})["image"], w["image"])
        assert (out / "classnames.txt").read_text().splitlines() == list(folder_card.labels["label"])
    raw = read_shard(tmp_path / "out-keep" / "test" / "0.tar")
    assert raw[1]["png"] == (folder / "rgb" / "0.png").read_bytes()  # 8-bit RGB PNG: copied as it is


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_an_existing_folder_is_replaced_only_with_force(tiny_shapes: Path, tmp_path: Path, capsys):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "old.txt").write_text("old")
    argv = ["--dataset", str(tiny_shapes), "--split", "heldout", "--out", str(out), "--label", "color", "--quiet"]
    assert main(argv) == 2
    assert "exists and is not empty; pass --force" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0
    assert f"tiny-shapes -> {out} (CLIP_benchmark classification, label color)" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"]  # no temporary or old folder left beside it
    assert not (out / "old.txt").exists() and (out / "heldout" / "nshards.txt").read_text() == "1\n"
    assert (out / "classnames.txt").read_text().splitlines() == list(load_card(tiny_shapes).labels["color"])


def test_templates_convert_both_ways_and_bad_input_says_what_to_do(exported: Path, tmp_path: Path, tiny_shapes):
    (exported.parent / "braces").mkdir()
    (exported.parent / "braces" / "test").symlink_to(exported / "test")
    (exported.parent / "braces" / "zeroshot_classification_templates.txt").write_text("{{literal}} a {c}\n\n")
    (exported.parent / "braces" / "classnames.txt").write_text("x\n")
    assert benchmark_card(exported.parent / "braces").templates == ("{{literal}} a {}",)
    (exported.parent / "braces" / "zeroshot_classification_templates.txt").write_text("a {c} and a {c}\n")
    with pytest.raises(ConfigError, match=r"must hold the class name once, as \{c\}"):
        benchmark_card(exported.parent / "braces")
    with pytest.raises(ConfigError, match="is not a CLIP_benchmark WebDataset folder"):
        load_dataset_card(f"wds:{tmp_path}")
    retrieval_only = _retrieval_only(tmp_path, exported)
    with pytest.raises(ConfigError, match="has no labels to classify; export it with --type retrieval"):
        export_benchmark(f"wds:{retrieval_only}", tmp_path / "again", kind="classification")
    again = export_benchmark(f"wds:{retrieval_only}", tmp_path / "again")  # no labels: a retrieval folder again
    assert (again["type"], again["label"], again["splits"]["test"]["samples"]) == ("retrieval", None, 96)
    assert (
        read_shard(tmp_path / "again" / "test" / "0.tar")[0]["txt"]
        == read_shard(exported / "test" / "0.tar")[0]["txt"]
    )
    with pytest.raises(ConfigError, match="has no split 'tset'"):
        export_benchmark(tiny_shapes, tmp_path / "x", splits=["tset"])
    assert not (tmp_path / "x").exists()


def _retrieval_only(tmp_path: Path, exported: Path) -> Path:
    """A CLIP_benchmark retrieval folder without class names (as its own retrieval exports are)."""
    folder = tmp_path / "retrieval-only"
    folder.mkdir()
    (folder / "test").symlink_to(exported / "test")
    (folder / "dataset_type.txt").write_text("retrieval\n")
    return folder
