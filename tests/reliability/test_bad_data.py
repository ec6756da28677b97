"""Bad data (issue #7, item 3): every fault a scraped image-text shard holds is either converted or skipped and
counted by reason, and a training run over such shards finishes.

One shard holds every fault among usable samples; a second is cut mid-member. They are checked at the decoder
(each image kind to its exact pixel value, each fault to its reason), through the stream (which keys come out, how
many skips per reason) and through real CLIP and classification runs (step count, samples trained on, the keys
recorded, the ``data`` section of ``results.json``).
"""

from __future__ import annotations

import io
import json
import random
import re
import struct
import tarfile
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import yaml
from PIL import Image

from multimodal.data import SampleDecoder, SampleStream, SkipStats, collate, make_loader
from multimodal.data.stream import DecodeError
from multimodal.data.transforms import MAX_ASPECT
from multimodal.tokenizers import ClipTokenizer
from tests.conftest import TINY_CLIP, tiny_recipe, train_recipe
from training.train import TrainingError

WHITE, GREY, RED = (1.0, 1.0, 1.0), (128 / 255,) * 3, (1.0, 0.0, 0.0)
RED_16 = b"\xff\xff\x00\x00\x00\x00"  # one 16-bit RGB pixel
RNG = random.Random(7)
HUGE_WORD = "".join(RNG.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(100_000))  # one 100,000-letter "word"


# -- image bytes of every kind ----------------------------------------------------------------------------------------
def _save(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_raw(width: int, height: int, *, bit_depth: int, color_type: int, rows: list[bytes]) -> bytes:
    """A PNG written by hand: for depths PIL cannot write (16-bit RGB) and headers that lie (a bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    pixels = zlib.compress(b"".join(b"\x00" + row for row in rows))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _grey(value: float, dtype: type, fmt: str = "PNG") -> bytes:
    """16 x 16 of one grey value; numpy's dtype picks PIL's mode: uint16 "I;16", int32 "I", float32 "F"."""
    return _save(Image.fromarray(np.full((16, 16), value, dtype)), fmt)


def _pgm16(value: int, maxval: int) -> bytes:
    """A 16-bit PGM: PIL reads it as mode "I", rescaled to 0..65535."""
    return f"P5\n4 4\n{maxval}\n".encode() + value.to_bytes(2, "big") * 16


def _sliver() -> bytes:
    """1 x 100,000 px, red in its middle 1,000 rows, blue elsewhere: its centre is red."""
    arr = np.zeros((100_000, 1, 3), np.uint8)
    arr[:, :, 2] = 255
    arr[49_500:50_500] = (255, 0, 0)
    return _save(Image.fromarray(arr))


GOOD_PNG = _save(Image.new("RGB", (16, 16), (200, 30, 30)))
NOISE_JPEG = _save(Image.fromarray(np.random.RandomState(0).randint(0, 255, (32, 32, 3), np.uint8)), "JPEG")
BOMB_PNG = _png_raw(20_000, 20_000, bit_depth=8, color_type=0, rows=[b"\x00" * 16])  # 400 Mpx claimed, 2x PIL's cap

# name -> (member extension, bytes, RGB in [0, 1] it must decode to, tolerance)
IMAGE_KINDS = {
    "rgb png": ("png", GOOD_PNG, (200 / 255, 30 / 255, 30 / 255), 0.5 / 255),
    "grey L": ("png", _save(Image.new("L", (16, 16), 128)), GREY, 0.5 / 255),
    "bilevel 1": ("png", _save(Image.new("1", (16, 16), 1)), WHITE, 0.5 / 255),
    "rgba, transparent": ("png", _save(Image.new("RGBA", (16, 16), (255, 0, 0, 0))), WHITE, 0.5 / 255),
    "rgba, half alpha": ("png", _save(Image.new("RGBA", (16, 16), (0, 0, 0, 128))), (127 / 255,) * 3, 1 / 255),
    "grey + alpha LA": ("png", _save(Image.new("LA", (16, 16), (0, 0))), WHITE, 0.5 / 255),
    "palette P": ("png", _save(Image.new("RGB", (16, 16), (255, 0, 0)).convert("P")), RED, 0.5 / 255),
    "palette, transparent": ("png", _save(Image.new("P", (16, 16), 0), transparency=0), WHITE, 0.5 / 255),
    "16-bit grey I;16, white": ("png", _grey(65535, np.uint16), WHITE, 0),  # .convert("RGB") would clip, not scale
    "16-bit grey I;16, mid": ("png", _grey(32768, np.uint16), GREY, 0),
    "16-bit grey I;16 tiff": ("tiff", _grey(65535, np.uint16, "TIFF"), WHITE, 0),
    "32-bit grey I tiff, white": ("tiff", _grey(65535, np.int32, "TIFF"), WHITE, 0),
    "16-bit pgm I, mid": ("png", _pgm16(512, maxval=1023), GREY, 0),  # PIL goes by the bytes, not the extension
    "float grey F tiff": ("tiff", _grey(0.25, np.float32, "TIFF"), (64 / 255,) * 3, 0),
    "16-bit rgb png": ("png", _png_raw(4, 4, bit_depth=16, color_type=2, rows=[RED_16 * 4] * 4), RED, 0),
    "16-bit rgba png": ("png", _png_raw(4, 4, bit_depth=16, color_type=6, rows=[b"\xff" * 32] * 4), WHITE, 0),
    "cmyk jpeg": ("jpg", _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"), RED, 3 / 255),
    "rgb webp": ("webp", _save(Image.new("RGB", (16, 16), (255, 0, 0)), "WEBP", lossless=True), RED, 0),
}

# name -> (sample members besides the key, the reason it is skipped for)
FAULTS = {
    "zero-byte image": ({"png": b""}, "empty image"),
    "random bytes": ({"png": bytes(RNG.randrange(256) for _ in range(600))}, "corrupt image"),
    "png cut in half": ({"png": GOOD_PNG[: len(GOOD_PNG) // 2]}, "corrupt image"),
    "jpeg cut in half": ({"jpg": NOISE_JPEG[: len(NOISE_JPEG) // 2]}, "corrupt image"),
    "png header only": ({"png": GOOD_PNG[:33]}, "corrupt image"),
    "400 Mpx png header": ({"png": BOMB_PNG}, "image too large"),
    "no image member": ({}, "missing image"),
}


def _pixels(decoded: torch.Tensor) -> torch.Tensor:
    return decoded.permute(1, 2, 0).reshape(-1, 3)  # (H * W, 3)


# -- the decoder ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(IMAGE_KINDS))
def test_every_image_mode_decodes_to_its_rgb_value(kind: str) -> None:
    ext, data, rgb, tol = IMAGE_KINDS[kind]
    decoder = SampleDecoder(image_size=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # output = pixel / 255
    image = decoder({"__key__": "k", ext: data})["image"]
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32
    assert torch.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0
    torch.testing.assert_close(_pixels(image), torch.tensor([rgb]).expand(64, 3), atol=tol + 1e-6, rtol=0)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_undecodable_images_raise_their_reason(fault: str) -> None:
    members, reason = FAULTS[fault]
    with pytest.raises(DecodeError) as err:
        SampleDecoder(image_size=8)({"__key__": "k", **members})
    assert err.value.reason == reason


def test_a_sliver_is_cropped_to_its_centre_before_resizing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1 x 100,000 image would first become 8 x 800,000 (at 224 px: 224 x 22,400,000, 15 GB); its centre 1 x 64
    (``MAX_ASPECT``) becomes 8 x 512."""
    resized = []
    resize = Image.Image.resize

    def spy(img, size, *args, **kwargs):
        resized.append(size)
        return resize(img, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    image = SampleDecoder(image_size=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))({"png": _sliver()})["image"]
    assert resized == [(8, 8 * MAX_ASPECT)]
    torch.testing.assert_close(_pixels(image), torch.tensor([RED]).expand(64, 3))  # the centre row is red


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"a red  circle\n", "a red circle"),
        (b"a \xff\xfe red circle", "a \ufffd\ufffd red circle"),  # not UTF-8: replaced, kept
        ("ünïcode café".encode(), "ünïcode café"),
        (HUGE_WORD.encode(), HUGE_WORD),  # kept whole; the tokenizer reads only its start
    ],
)
def test_captions_are_cleaned_and_non_utf8_bytes_replaced(raw: bytes, text: str) -> None:
    assert SampleDecoder(image_size=8, text_key="txt")({"png": GOOD_PNG, "txt": raw})["text"] == text


@pytest.mark.parametrize(
    ("members", "reason"),
    [({}, "missing caption"), ({"txt": b""}, "empty caption"), ({"txt": b" \t\r\n \xc2\xa0"}, "empty caption")],
)
def test_missing_and_blank_captions_raise_their_reason(members: dict, reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        SampleDecoder(image_size=8, text_key="txt")({"png": GOOD_PNG, **members})
    assert err.value.reason == reason


def test_a_100k_character_caption_tokenizes_fast_and_like_open_clip() -> None:
    """Byte-pair encoding is quadratic in a word's length: the whole 100,000-letter word would take minutes."""
    tokenizer = ClipTokenizer(77)
    tokenizer("warm up")
    start = time.perf_counter()
    tokens = tokenizer([HUGE_WORD, ("a red circle " * 8_000)[:100_000]])
    seconds = time.perf_counter() - start
    assert seconds < 1.0, f"{seconds:.2f} s"
    expected = open_clip.tokenize([HUGE_WORD[:1_000], "a red circle " * 30])  # both fill the context long before
    assert torch.equal(tokens, expected)
    assert tokens[0, -1] == tokenizer.eot_token_id and (tokens[0, 1:-1] < 49406).all()


# -- shards -----------------------------------------------------------------------------------------------------------
def _write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")  # "16-bit grey I;16, white" -> "16-bit-grey-i-16-white"


USABLE_IMAGES = (
    "grey L", "rgba, transparent", "palette P", "palette, transparent", "16-bit grey I;16, white",
    "32-bit grey I tiff, white", "16-bit rgb png", "cmyk jpeg",
)  # fmt: skip
USABLE = [(name, {IMAGE_KINDS[name][0]: IMAGE_KINDS[name][1], "txt": f"a {name}".encode()}) for name in USABLE_IMAGES]
USABLE += [
    ("huge caption", {"png": GOOD_PNG, "txt": HUGE_WORD.encode()}),
    ("non-utf8 caption", {"png": GOOD_PNG, "txt": b"a red \xff\xfe square"}),
    ("sliver", {"png": _sliver(), "txt": b"a red sliver"}),
]
IMAGE_FAULTS = [(name, {**members, "txt": b"a caption"}) for name, (members, _) in FAULTS.items()]
CAPTION_FAULTS = [
    ("no caption", {"png": GOOD_PNG}),
    ("empty caption", {"png": GOOD_PNG, "txt": b""}),
    ("blank caption", {"png": GOOD_PNG, "txt": b"  \n\t "}),
]
GOOD = [(f"good {i}", {"png": GOOD_PNG, "txt": b"a red square"}) for i in range(6)]
CUT = [(f"cut {i}", {"png": GOOD_PNG, "txt": b"a red square"}) for i in range(8)]  # cut inside the 6th's image

CLIP_SKIPS = {
    "corrupt image": 4, "empty image": 1, "image too large": 1, "missing image": 1, "missing caption": 1,
    "empty caption": 2,
}  # fmt: skip
CLASSIFICATION_SKIPS = {"corrupt image": 4, "empty image": 1, "image too large": 1, "missing image": 1}
TRUNCATION = "unreadable after 5 samples (", "), 3 of 8 samples lost"  # how the cut shard is reported


@pytest.fixture(scope="module")
def bad_shards(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A card over two shards, 32 raw samples in all, of which a CLIP run keeps 22 and a classifier 25.

    ``train/000000.tar`` (27): a good sample, the 7 image faults in a row, the 3 caption faults each followed by
    a usable sample, the other 8 usable samples, 5 good ones. Seven faults in a row fill exactly one batch of 4 at any
    alignment; no other batch of 4 is all faults. ``train/000001.tar``: 8 good samples cut inside the 6th's image
    (5 readable), its ``_stats.json`` counting 8.
    """
    root = tmp_path_factory.mktemp("bad-data")
    (root / "train").mkdir()
    spread = [s for pair in zip(CAPTION_FAULTS, USABLE, strict=False) for s in pair]
    mixed = GOOD[:1] + IMAGE_FAULTS + spread + USABLE[len(CAPTION_FAULTS) :] + GOOD[1:]
    samples = [(_key(name), {**m, "json": json.dumps({"color": i % 3}).encode()}) for i, (name, m) in enumerate(mixed)]
    _write_tar(root / "train" / "000000.tar", samples)

    cut = root / "train" / "000001.tar"
    _write_tar(cut, [(_key(name), {**m, "json": b'{"color": 0}'}) for name, m in CUT])
    data = cut.read_bytes()
    cut.write_bytes(data[: data.index(b"cut-5.png") + 512 + len(GOOD_PNG) // 2])  # its header, half the image
    (root / "train" / "000001_stats.json").write_text(json.dumps({"successes": 8}))

    card = {
        "name": "bad-data", "root": str(root), "text_key": "txt",
        "splits": {"train": {"shards": "train/{000000..000001}.tar"}}, "labels": {"color": ["red", "green", "blue"]},
    }  # fmt: skip
    (root / "card.yaml").write_text(yaml.safe_dump(card))
    assert len(samples) == 27
    return {"root": root, "card": root / "card.yaml", "keys": [k for k, _ in samples]}


def _used(keys: list[str], *, captions: bool) -> list[str]:
    """The keys of ``000000.tar`` a run keeps (in order), then the 5 readable of ``000001.tar``."""
    skipped = {_key(name) for name, _ in IMAGE_FAULTS + (CAPTION_FAULTS if captions else [])}
    return [k for k in keys if k not in skipped] + [_key(name) for name, _ in CUT[:5]]


def _reasons(stats: SkipStats) -> dict[str, int]:
    out: Counter = Counter()
    for (source, reason), n in stats.samples.items():
        assert Path(source).name == "000000.tar", source
        out[reason] += n
    return dict(out)


def test_stream_converts_what_decodes_and_counts_the_rest_by_reason(bad_shards: dict) -> None:
    decode = SampleDecoder(image_size=8, text_key="txt", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    urls = [str(bad_shards["root"] / "train" / f"00000{i}.tar") for i in (0, 1)]
    stream = SampleStream(urls=urls, decode=decode, collate=collate, batch_size=4, infinite=False, shuffle_buffer=0)
    stats, keys, texts, sizes = SkipStats(), [], [], []
    for batch in make_loader(stream, num_workers=0):
        stats.update(batch["skipped"])
        sizes.append(batch["size"])
        if batch["size"]:
            keys += batch["key"]
            texts += batch["text"]
            images = batch["image"]  # (size, 3, 8, 8)
            assert images.shape == (batch["size"], 3, 8, 8)
            assert torch.isfinite(images).all() and 0.0 <= images.min() <= images.max() <= 1.0
    assert keys == _used(bad_shards["keys"], captions=True) and len(keys) == 22
    # 32 raw samples in 8 batches, the 2nd all image faults; then an empty one reports the cut shard, read last
    assert sizes == [1, 0, 2, 3, 4, 4, 4, 4, 0]
    assert _reasons(stats) == CLIP_SKIPS and stats.total == 10
    cut = str(bad_shards["root"] / "train" / "000001.tar")
    assert list(stats.shards) == [cut]
    assert stats.shards[cut].startswith(TRUNCATION[0]) and stats.shards[cut].endswith(TRUNCATION[1])
    assert len(texts[keys.index("huge-caption")]) == 100_000
    assert texts[keys.index("non-utf8-caption")] == "a red \ufffd\ufffd square"


@pytest.mark.parametrize(
    ("kind", "resampled"),
    [("garbage", False), ("garbage", True), ("empty tar", False), ("empty tar", True), ("fewer samples", False)],
)  # resampled consumers read whole shards, so no fewer-samples-than-consumers case there
def test_an_endless_stream_with_nothing_to_read_fails_instead_of_spinning(tmp_path, kind, resampled) -> None:
    urls = [str(tmp_path / f"{i}.tar") for i in range(2)]
    for url in urls:
        if kind == "garbage":
            Path(url).write_bytes(b"\x00not a tar" * 100)
        else:
            _write_tar(Path(url), [("only", {"png": GOOD_PNG})] if kind != "empty tar" else [])
    rank, world = (2, 3) if kind == "fewer samples" else (0, 1)  # 2 samples, 3 ranks: the third gets none
    stream = SampleStream(
        urls=urls, decode=SampleDecoder(image_size=8), collate=collate, batch_size=2, rank=rank, world_size=world,
        resampled=resampled, shuffle_buffer=0,
    )  # fmt: skip
    with pytest.raises(
        ValueError, match=rf"no sample reached data-loader consumer {rank} of {world} after it read all 2"
    ):
        next(iter(make_loader(stream, num_workers=0)))


# -- training runs ----------------------------------------------------------------------------------------------------
def _recipe(card: Path, out_dir: Path, **data) -> dict:
    """7 steps of 4: one pass over the 32 raw samples, as one batch of 4 is all faults and is passed over.

    Seed 0 reads ``000001.tar`` first in that pass, so its end, and its truncation, are seen within it.
    """
    return tiny_recipe(
        card, out_dir, run={"name": out_dir.name, "seed": 0},
        data={"label": "color", "batch_size": 4, "num_workers": 0, "shuffle_buffer": 0, "eval_split": None, **data},
        train={"steps": 7, "log_every": 4, "checkpoint_every": 0, "record_keys": True},
    )  # fmt: skip


def _check_run(run: Path, results: dict, keys: list[str], skips: dict[str, int], faults) -> None:
    assert results["step"] == 7 and results["samples"] == len(keys) == 32 - sum(skips.values())
    trained = [line.split("\t")[1] for line in (run / "keys" / "rank-0.txt").read_text().splitlines()]
    assert sorted(trained) == sorted(keys)  # every usable sample once, no fault
    data = results["data"]
    assert data["skipped_samples"] == sum(skips.values())
    by_reason: Counter = Counter()
    for name, n in data["by_source"].items():  # "train/000000.tar (corrupt image)": 4
        source, reason = name.removesuffix(")").split(" (", 1)
        assert source == "train/000000.tar", name
        by_reason[reason] += n
    assert dict(by_reason) == skips
    assert list(data["unreadable_shards"]) == ["train/000001.tar"]
    assert data["unreadable_shards"]["train/000001.tar"].endswith(TRUNCATION[1])
    assert json.loads((run / "results.json").read_text())["data"] == data
    lost = f"{sum(skips.values())} undecodable samples skipped and counted by reason, 3 lost to the cut; run finished"
    faults("shards with every bad sample kind + a truncated tar", lost)


def test_clip_run_over_bad_data_finishes_and_reports_every_skip(bad_shards: dict, tmp_path: Path, faults) -> None:
    recipe = _recipe(bad_shards["card"], tmp_path / "clip")
    recipe["task"] = {"name": "clip", "zeroshot_splits": []}
    recipe["model"] = TINY_CLIP
    results = train_recipe(tmp_path, recipe)
    _check_run(tmp_path / "clip", results, _used(bad_shards["keys"], captions=True), CLIP_SKIPS, faults)
    records = [json.loads(x) for x in (tmp_path / "clip" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 2 and np.isfinite(losses).all()  # logged at steps 4 and 7


def test_classification_run_and_its_evaluation_over_bad_data_finish(bad_shards: dict, tmp_path: Path, faults) -> None:
    results = train_recipe(
        tmp_path, _recipe(bad_shards["card"], tmp_path / "cls", eval_split="train", eval_batch_size=4)
    )
    _check_run(tmp_path / "cls", results, _used(bad_shards["keys"], captions=False), CLASSIFICATION_SKIPS, faults)
    assert results["eval/skipped_samples"] == 7  # the evaluation pass skips the same image faults
    assert 0.0 <= results["eval/top1"] <= 1.0


def test_a_run_whose_every_sample_is_unusable_stops_with_the_reasons(tmp_path, monkeypatch) -> None:
    (tmp_path / "train").mkdir()
    _write_tar(tmp_path / "train" / "000000.tar", [(f"bad-{i}", {"png": b"not a png", "txt": b"x"}) for i in range(8)])
    card = {"name": "all-bad", "root": str(tmp_path), "image_key": "png", "text_key": "txt",
            "splits": {"train": {"shards": "train/000000.tar"}}, "labels": {"color": ["red"]}}  # fmt: skip
    (tmp_path / "card.yaml").write_text(yaml.safe_dump(card))
    monkeypatch.setattr("training.trainer.MAX_EMPTY_BATCHES", 20)
    with pytest.raises(TrainingError, match=r"20 batches in a row held no usable sample.*corrupt image") as stop:
        train_recipe(tmp_path, _recipe(tmp_path / "card.yaml", tmp_path / "run"))
    assert "Check data.dataset" in str(stop.value)
