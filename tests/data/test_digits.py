import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from sklearn.datasets import load_digits

from multimodal.data import digits, shards
from multimodal.data.digits import build_manifest, generate_digits

CARD = Path(__file__).resolve().parents[2] / "datasets" / "digits.yaml"


def _load(root: Path, split: str) -> list[dict]:
    samples = []
    for path in sorted((root / split).glob("*.tar")):
        for raw in shards.read_shard(path):
            image = Image.open(io.BytesIO(raw["png"]))
            samples.append({"image": image, "txt": raw["txt"].decode(), "json": json.loads(raw["json"])})
    return samples


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, dict, dict[str, list[dict]]]:
    root = tmp_path_factory.mktemp("digits")
    manifest = generate_digits(root)
    return root, manifest, {split: _load(root, split) for split in digits.SPLITS}


def test_split_sizes_and_shards(written):
    root, manifest, samples = written
    assert len(samples["train"]) == 1437 and len(samples["test"]) == 360
    assert manifest == json.loads(json.dumps(build_manifest()))
    assert manifest["splits"]["train"] == {
        "shards": "train/{000000..000001}.tar",
        "num_samples": 1437,
        "num_shards": 2,
    }
    assert [len(shards.read_shard(root / "train" / n)) for n in ("000000.tar", "000001.tar")] == [1000, 437]
    sources = [s["json"]["source_index"] for split in samples.values() for s in split]
    assert sorted(sources) == list(range(1797))  # every scan exactly once, no overlap between splits
    keys = [s["json"]["key"] for s in samples["test"]]
    assert keys == [f"test_{i:06d}" for i in range(360)]


def test_images_and_labels_match_sklearn(written):
    _, _, samples = written
    data = load_digits()
    for split, items in samples.items():
        for s in items:
            source = s["json"]["source_index"]
            assert s["image"].mode == "L" and s["image"].size == (8, 8)
            expected = np.rint(data.images[source] * 255 / 16).astype(np.uint8)
            np.testing.assert_array_equal(np.asarray(s["image"]), expected)
            assert s["json"]["label"] == data.target[source]
            assert s["json"]["split"] == split


def test_to_uint8_scale():
    np.testing.assert_array_equal(digits.to_uint8(np.array([0.0, 1.0, 8.0, 16.0])), [0, 16, 128, 255])


def test_labels_are_stratified(written):
    _, _, samples = written
    total = Counter(load_digits().target.tolist())
    test = Counter(s["json"]["label"] for s in samples["test"])
    train = Counter(s["json"]["label"] for s in samples["train"])
    for digit, n in total.items():
        assert abs(test[digit] - n * 360 / 1797) <= 1
        assert train[digit] + test[digit] == n


def test_captions_name_the_digit(written):
    _, _, samples = written
    for s in samples["train"]:
        label = s["json"]["label"]
        assert s["txt"] == s["json"]["caption"]
        assert str(label) in s["txt"].split() or digits.NUMBER_WORDS[label] in s["txt"].split()
    assert len({s["txt"].split()[1] for s in samples["train"]}) >= 4  # several templates in use


def test_card_matches_generator():
    card = yaml.safe_load(CARD.read_text())
    expected = build_manifest()
    assert card["name"] == card["generator"] == card["root"] == "digits"
    assert (card["image_key"], card["text_key"]) == (expected["image_key"], expected["text_key"])
    assert card["splits"] == {
        split: {"shards": info["shards"], "num_samples": info["num_samples"]}
        for split, info in expected["splits"].items()
    }
    assert card["labels"] == {"label": [str(d) for d in range(10)]} == expected["labels"]
    assert card["templates"] == expected["templates"]


def test_deterministic_idempotent_and_seeded(written, tmp_path):
    root, _, _ = written
    generate_digits(tmp_path / "again")
    assert _file_bytes(tmp_path / "again") == _file_bytes(root)

    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "again").rglob("*")}
    generate_digits(tmp_path / "again")
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "again").rglob("*")} == before

    other = digits.split_indices(seed=1)["test"]
    assert not np.array_equal(other, digits.split_indices(seed=0)["test"])
    assert len(other) == 360


def test_partial_directory_is_regenerated(written, tmp_path):
    root, _, _ = written
    generate_digits(tmp_path)
    (tmp_path / "manifest.json").unlink()
    (tmp_path / "test/000000.tar").write_bytes(b"half written")
    (tmp_path / "test/000004.tar").write_bytes(b"stale")
    assert not shards.is_complete(tmp_path)
    generate_digits(tmp_path)
    assert _file_bytes(tmp_path) == _file_bytes(root)


def test_bad_test_size_and_cli(tmp_path, capsys):
    with pytest.raises(ValueError, match="test_size"):
        generate_digits(tmp_path, test_size=5)
    digits.main(["--out", str(tmp_path / "cli"), "--test-size", "500", "--samples-per-shard", "300"])
    assert "train/{000000..000004}.tar" in capsys.readouterr().out
    manifest = shards.read_manifest(tmp_path / "cli")
    assert manifest["splits"]["test"]["num_samples"] == 500
    assert manifest["splits"]["train"]["num_samples"] == 1297
