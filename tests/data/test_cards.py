"""Dataset cards: what ``data.dataset`` accepts (shard folders, brace patterns, one .tar, cards, image folders),
the cards made on the fly for shards (splits, sample counts, image key), and the card's ``image_key`` honoured."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from multimodal.config import ConfigError
from multimodal.data import DecodeError, SampleDecoder, SampleStream, SkipStats, collate, load_card
from multimodal.data import cards as cards_module
from tests.data.test_stream import _write_tar

COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")


def shape_image(color: str, shape: str, size: int = 64) -> Image.Image:
    """A coloured shape on a white background."""
    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw, box = ImageDraw.Draw(img), (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    if shape == "circle":
        draw.ellipse(box, fill=COLORS[color])
    elif shape == "square":
        draw.rectangle(box, fill=COLORS[color])
    else:
        draw.polygon(
            [(size // 2, size // 4), (size // 4, 3 * size // 4), (3 * size // 4, 3 * size // 4)], COLORS[color]
        )
    return img


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format={"jpg": "JPEG", "png": "PNG"}[fmt])
    return buf.getvalue()


def write_img2dataset_shards(
    folder: Path, shards: int = 2, per_shard: int = 12, *, stats: bool = True, ext: str = "jpg", start: int = 0
) -> list[Path]:
    """Shards as ``img2dataset --output_format webdataset`` writes them: ``00000.tar`` holding ``000000000.jpg``
    (JPEG bytes), ``.txt`` (the caption) and ``.json``, with a sibling ``00000_stats.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(start, start + shards):
        path = folder / f"{shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                key = f"{shard:05d}{i:04d}"  # img2dataset: shard id then index in the shard, 9 digits
                color, shape = list(COLORS)[i % len(COLORS)], SHAPES[(i // len(COLORS)) % len(SHAPES)]
                caption = f"a {color} {shape}"
                image = encode(shape_image(color, shape), ext)
                meta = {
                    "url": f"https://example.com/{key}.{ext}", "caption": caption, "key": key, "status": "success",
                    "error_message": None, "width": 64, "height": 64, "original_width": 256,
                    "original_height": 256, "exif": "{}", "sha256": hashlib.sha256(image).hexdigest(),
                }  # fmt: skip
                for suffix, data in ((ext, image), ("txt", caption.encode()), ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{suffix}")
                    info.size, info.mtime = len(data), 0
                    tar.addfile(info, io.BytesIO(data))
        if stats:
            (folder / f"{shard:05d}_stats.json").write_text(
                json.dumps({"count": per_shard, "successes": per_shard, "failed_to_download": 0,
                            "failed_to_resize": 0, "duration": 1.0, "status_dict": {"success": per_shard}})
            )  # fmt: skip
        paths.append(path)
    return paths


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    _write_tar(path, members)
    return path


# -- what data.dataset accepts ------------------------------------------------------------------------------------
def test_a_flat_folder_of_shards_is_split_train_counted_from_its_stats(tmp_path):
    root = tmp_path / "mywds"
    urls = write_img2dataset_shards(root)
    card = load_card(root)
    assert (card.name, card.format, card.root, card.source) == ("mywds", "wds", str(root), str(root))
    assert list(card.splits) == ["train"]
    assert card.splits["train"].shards == "{00000..00001}.tar" and card.splits["train"].num_samples == 24
    assert (card.image_key, card.text_key, card.captions_key, card.labels) == ("jpg", "txt", None, {})
    assert card.templates == ("a photo of a {}.",)
    assert card.shard_urls("train") == [str(u) for u in urls]
    assert load_card(write_img2dataset_shards(tmp_path / "other" / "train")[0].parent).name == "other"


def test_split_subfolders_of_shards_become_splits_counted_from_the_tars(tmp_path):
    root = tmp_path / "mywds"
    write_img2dataset_shards(root / "val", shards=1, per_shard=5, stats=False)
    write_img2dataset_shards(root / "train", shards=3, per_shard=7, stats=False)
    card = load_card(str(root))
    assert list(card.splits) == ["train", "val"]
    assert card.splits["train"].shards == "train/{00000..00002}.tar" and card.splits["train"].num_samples == 21
    assert card.splits["val"].shards == "val/00000.tar" and card.splits["val"].num_samples == 5
    assert len(card.shard_urls("train")) == 3
    with pytest.raises(ConfigError) as e:
        card.split("test", key="data.eval_split")
    assert str(e.value) == "dataset 'mywds' has no split 'test'; set data.eval_split to one of: train, val"


def test_a_brace_pattern_and_a_single_tar_are_split_train(tmp_path):
    root = tmp_path / "mywds"
    write_img2dataset_shards(root, shards=3)
    card = load_card(f"{root}/{{00000..00001}}.tar")
    assert (card.name, card.root, list(card.splits)) == ("mywds", str(root), ["train"])
    assert card.splits["train"].shards == "{00000..00001}.tar" and card.splits["train"].num_samples == 24
    assert card.shard_urls("train") == [str(root / "00000.tar"), str(root / "00001.tar")]
    one = load_card(root / "00002.tar")
    assert one.splits["train"].shards == "00002.tar" and one.splits["train"].num_samples == 12
    assert one.image_key == "jpg"


def test_non_contiguous_shard_names_are_listed(tmp_path):
    root = tmp_path / "gaps"
    write_img2dataset_shards(root, shards=1)
    write_img2dataset_shards(root, shards=1, start=3)
    card = load_card(root)
    assert card.splits["train"].shards == "{00000,00003}.tar" and card.splits["train"].num_samples == 24
    assert [Path(u).name for u in card.shard_urls("train")] == ["00000.tar", "00003.tar"]


def test_a_card_path_and_a_card_name_still_load(tmp_path):
    path = tmp_path / "mine.yaml"
    train = {"shards": "{00000..00001}.tar", "num_samples": 24}
    path.write_text(
        yaml.safe_dump({"name": "mine", "root": str(tmp_path), "image_key": "jpg;png", "splits": {"train": train}})
    )
    card = load_card(path)
    assert (card.name, card.image_key, card.splits["train"].num_samples) == ("mine", "jpg;png", 24)
    assert load_card("shapes").image_key == "png"


def test_an_image_folder_with_class_subfolders_keeps_working(tmp_path):
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (tmp_path / "pets" / split / cls).mkdir(parents=True)
            shape_image("red", "circle", 8).save(tmp_path / "pets" / split / cls / "0.png")
    card = load_card(tmp_path / "pets")
    assert (card.format, list(card.splits), card.labels) == ("folder", ["train", "test"], {"label": ("cat", "dog")})


def test_a_folder_with_neither_layout_names_both_and_the_cards(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as e:
        load_card(tmp_path / "empty")
    assert str(e.value) == (
        f"{tmp_path / 'empty'} holds neither WebDataset shards (*.tar, or split subfolders of them) nor class "
        "subfolders (<root>/<class>/<image>); pass a folder in one of these layouts, a brace pattern such as "
        "/data/mywds/{00000..00009}.tar, or a dataset card (see datasets/README.md)"
    )


def test_a_brace_pattern_matching_missing_files_names_one(tmp_path):
    write_img2dataset_shards(tmp_path / "mywds", shards=2)
    with pytest.raises(FileNotFoundError) as e:
        load_card(f"{tmp_path}/mywds/{{00000..00003}}.tar")
    assert str(e.value) == (
        f"2 of the 4 shards of '{tmp_path}/mywds/{{00000..00003}}.tar' do not exist, e.g. {tmp_path}/mywds/00002.tar; "
        "check the folder and the brace range"
    )
    with pytest.raises(FileNotFoundError, match=r"^shard .*/nowhere/00000\.tar does not exist; check the path$"):
        load_card(f"{tmp_path}/nowhere/{{00000..00000}}.tar")
    with pytest.raises(ConfigError, match=r"dataset '.*/nowhere' does not exist; pass a card name or \.yaml path"):
        load_card(f"{tmp_path}/nowhere")


# -- sample counts and image keys ---------------------------------------------------------------------------------
def test_num_samples_prefers_successes_then_count_then_the_tar_headers(tmp_path, monkeypatch):
    root = tmp_path / "mywds"
    write_img2dataset_shards(root, shards=2, per_shard=12)
    (root / "00000_stats.json").write_text(json.dumps({"count": 12, "successes": 10}))
    (root / "00001_stats.json").write_text(json.dumps({"count": 11}))
    assert load_card(root).splits["train"].num_samples == 10 + 11  # what the stats say, not what the tars hold
    (root / "00001_stats.json").unlink()  # one shard without stats: every shard is counted
    assert load_card(root).splits["train"].num_samples == 24
    monkeypatch.setattr(cards_module, "COUNT_LIMIT", 1)  # too many shards to count: unknown
    assert load_card(root).splits["train"].num_samples is None


def test_the_image_key_is_detected_from_the_first_shard(tmp_path):
    write_img2dataset_shards(tmp_path / "jpgs", shards=1)
    write_img2dataset_shards(tmp_path / "pngs", shards=1, ext="png")
    assert load_card(tmp_path / "jpgs").image_key == "jpg"
    assert load_card(tmp_path / "pngs").image_key == "png"
    png, jpg = encode(shape_image("red", "circle"), "png"), encode(shape_image("red", "circle"), "jpg")
    mixed = {"a.png": png, "a.txt": b"a", "b.JPG": jpg, "b.txt": b"b", "c.jpg": jpg, "c.txt": b"c"}
    (tmp_path / "mixed").mkdir()
    write_tar(tmp_path / "mixed" / "00000.tar", mixed)
    card = load_card(tmp_path / "mixed")
    assert card.image_key == "jpg;png" and card.splits["train"].num_samples == 3  # most common first


# -- the card's image key is honoured -----------------------------------------------------------------------------
RED, BLUE = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # output = pixel / 255


def test_the_decoder_reads_the_image_key_member_and_alternatives():
    sample = {"__key__": "k", "png": encode(RED, "png"), "jpg": encode(BLUE, "jpg")}
    default = SampleDecoder(image_size=8, **IDENTITY)(sample)["image"]  # no key: the first of IMAGE_KEYS, png
    jpg = SampleDecoder(image_size=8, image_key="jpg", **IDENTITY)(sample)["image"]
    either = SampleDecoder(image_size=8, image_key="webp;JPG;png", **IDENTITY)(sample)["image"]
    assert default[:, 4, 4].tolist() == [1.0, 0.0, 0.0]
    assert np.allclose(jpg[:, 4, 4].tolist(), [0.0, 0.0, 1.0], atol=0.02)  # JPEG is lossy: blue, near exactly
    assert jpg[2].mean() - jpg[0].mean() > 0.95 and default[0].mean() - default[2].mean() == 1.0
    assert (either == jpg).all()


def test_a_sample_without_the_image_key_is_skipped_as_missing_image(tmp_path):
    with pytest.raises(DecodeError) as e:
        SampleDecoder(image_size=8, image_key="jpg")({"__key__": "k", "png": encode(RED, "png")})
    assert e.value.reason == "missing image" and str(e.value) == "missing image: no .jpg member"
    tar = write_tar(tmp_path / "00000.tar", {"a.png": encode(RED, "png"), "b.jpg": encode(BLUE, "jpg")})
    stream = SampleStream(urls=[str(tar)], decode=SampleDecoder(image_size=8, image_key="jpg"), collate=collate,
                          batch_size=4, infinite=False, shuffle_buffer=0)  # fmt: skip
    batch = next(iter(stream))
    skips = SkipStats()
    skips.update(batch["skipped"])
    assert batch["key"] == ["b"] and skips.to_json()["by_source"] == {f"{tmp_path.name}/00000.tar (missing image)": 1}
