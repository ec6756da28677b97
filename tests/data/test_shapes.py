import io
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
import yaml
from PIL import Image

from multimodal.data import shapes, shards
from multimodal.data.shapes import HELDOUT_COMBOS, ShapesSpec, build_manifest, class_names, generate_shapes

CARD = Path(__file__).resolve().parents[2] / "datasets" / "shapes.yaml"
SMALL = ShapesSpec(seed=0, train=300, test=100, heldout=100, samples_per_shard=100)
TINY = ShapesSpec(seed=0, train=20, test=10, heldout=10, samples_per_shard=10)


def _load(root: Path, split: str) -> list[dict]:
    samples = []
    for path in sorted((root / split).glob("*.tar")):
        for raw in shards.read_shard(path):
            samples.append(
                {
                    "image": np.asarray(Image.open(io.BytesIO(raw["png"]))),
                    "txt": raw["txt"].decode(),
                    "json": json.loads(raw["json"]),
                }
            )
    return samples


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, dict, dict[str, list[dict]]]:
    root = tmp_path_factory.mktemp("shapes")
    manifest = generate_shapes(root, SMALL, workers=2)
    return root, manifest, {split: _load(root, split) for split in shapes.SPLITS}


def test_class_names_are_colour_major_over_all_pairs():
    names = class_names("color_shape")
    assert len(names) == len(shapes.COLORS) * len(shapes.SHAPES) == 36
    assert names[:3] == ["red circle", "red square", "red triangle"]
    for color, shape in HELDOUT_COMBOS:
        index = class_names("color").index(color) * len(shapes.SHAPES) + class_names("shape").index(shape)
        assert names[index] == f"{color} {shape}"
    with pytest.raises(ValueError, match="unknown task"):
        class_names("size")


def test_heldout_combos_cover_each_colour_and_shape_once():
    colors = [c for c, _ in HELDOUT_COMBOS]
    shape_names = [s for _, s in HELDOUT_COMBOS]
    assert sorted(colors) == sorted(shapes.COLORS)
    assert sorted(shape_names) == sorted(shapes.SHAPES)


def test_palette_is_distinct_and_backgrounds_are_achromatic():
    rgb = np.array(list(shapes.COLORS.values()), dtype=float)
    distances = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
    assert distances[~np.eye(len(rgb), dtype=bool)].min() > 95
    assert (rgb.max(1) - rgb.min(1)).min() >= 120  # saturated: far from every gray background


def test_spec_validation():
    for bad in ({"train": 0}, {"image_size": 8}, {"samples_per_shard": 0}, {"two_object_prob": 1.5}):
        with pytest.raises(ValueError):
            ShapesSpec(**bad)


def test_card_matches_default_spec():
    card = yaml.safe_load(CARD.read_text())
    expected = build_manifest(ShapesSpec())
    assert card["name"] == card["generator"] == card["root"] == "shapes"
    assert card["image_key"] == expected["image_key"] == "png"
    assert card["text_key"] == expected["text_key"] == "txt"
    assert card["captions_key"] == expected["captions_key"] == "captions"
    assert card["splits"] == {
        split: {"shards": info["shards"], "num_samples": info["num_samples"]}
        for split, info in expected["splits"].items()
    }
    assert card["splits"]["train"] == {"shards": "train/{000000..000019}.tar", "num_samples": 20000}
    assert card["labels"] == expected["labels"]
    assert card["heldout_combos"] == expected["heldout_combos"]
    assert card["templates"] == expected["templates"]


def test_manifest_and_shards_match_spec(small):
    root, manifest, samples = small
    assert manifest == json.loads(json.dumps(build_manifest(SMALL)))
    assert shards.read_manifest(root) == manifest
    for split, n in (("train", 300), ("test", 100), ("heldout", 100)):
        info = manifest["splits"][split]
        assert info["num_samples"] == len(samples[split]) == n
        urls = wds.shardlists.expand_urls(str(root / info["shards"]))
        assert sorted(urls) == sorted(str(p) for p in (root / split).glob("*.tar"))
        assert [len(shards.read_shard(Path(u))) for u in urls] == [100] * (n // 100)
        assert [s["json"]["key"] for s in samples[split]] == [f"{split}_{i:06d}" for i in range(n)]
        assert {s["json"]["split"] for s in samples[split]} == {split}


def test_webdataset_decodes_samples(small):
    root, manifest, samples = small
    ds = wds.WebDataset(str(root / manifest["splits"]["test"]["shards"]), shardshuffle=False).decode("pil")
    first = next(iter(ds))
    assert first["png"].size == (64, 64) and first["png"].mode == "RGB"
    assert first["txt"] == first["json"]["caption"] == samples["test"][0]["txt"]


def test_labels_describe_the_primary_object(small):
    _, _, samples = small
    for s in samples["train"] + samples["test"] + samples["heldout"]:
        label, primary = s["json"], s["json"]["objects"][0]
        assert class_names("color")[label["color"]] == primary["color"]
        assert class_names("shape")[label["shape"]] == primary["shape"]
        assert class_names("color_shape")[label["color_shape"]] == f"{primary['color']} {primary['shape']}"
        assert s["image"].shape == (64, 64, 3) and s["image"].dtype == np.uint8


def test_heldout_combos_only_in_heldout_split(small):
    _, _, samples = small
    heldout = {tuple(c) for c in HELDOUT_COMBOS}
    for s in samples["train"] + samples["test"]:
        assert all((o["color"], o["shape"]) not in heldout for o in s["json"]["objects"])
    for s in samples["heldout"]:
        objects = s["json"]["objects"]
        assert (objects[0]["color"], objects[0]["shape"]) in heldout
        assert all((o["color"], o["shape"]) not in heldout for o in objects[1:])
    assert {
        (s["json"]["objects"][0]["color"], s["json"]["objects"][0]["shape"]) for s in samples["heldout"]
    } == heldout


def test_primary_is_strictly_larger_and_apart(small):
    _, _, samples = small
    sizes = list(shapes.SIZES)
    two = [s["json"]["objects"] for s in samples["train"] if len(s["json"]["objects"]) == 2]
    assert 0.4 < len(two) / len(samples["train"]) < 0.6  # two_object_prob = 0.5
    for primary, secondary in two:
        assert sizes.index(primary["size"]) > sizes.index(secondary["size"])
        (a0, a1, a2, a3), (b0, b1, b2, b3) = primary["bbox"], secondary["bbox"]
        assert max(a2 - a0, a3 - a1) > 1.2 * max(b2 - b0, b3 - b1)
        assert a2 <= b0 or b2 <= a0 or a3 <= b1 or b3 <= a1  # boxes do not intersect


def test_captions_name_the_objects_and_their_relation(small):
    _, _, samples = small
    checked = subject_only = 0
    for s in samples["train"] + samples["heldout"]:
        captions, objects = s["json"]["captions"], s["json"]["objects"]
        assert s["txt"] == s["json"]["caption"] == captions[0]
        assert len(captions) == len(set(captions)) == SMALL.captions_per_image
        for caption in captions:
            names = [f"{o['color']} {o['shape']}" for o in objects]
            assert names[0] in caption  # the primary is in every caption
            if len(objects) == 2 and names[1] not in caption:  # a caption of the main subject alone
                subject_only += 1
                assert " and " not in caption or caption.endswith("and something smaller"), caption
                continue
            if len(objects) == 2:
                (a0, a1, a2, a3), (b0, b1, b2, b3) = objects[0]["bbox"], objects[1]["bbox"]
                dx, dy = (a0 + a2 - b0 - b2) / 2, (a1 + a3 - b1 - b3) / 2  # primary centre minus secondary centre
                for word, holds in (("above", dy < 0), ("below", dy > 0), ("left of", dx < 0), ("right of", dx > 0)):
                    if f" {word} " in caption:
                        assert holds, caption
                        checked += 1
    assert checked > 30
    two = sum(len(s["json"]["objects"]) == 2 for s in samples["train"] + samples["heldout"])
    share = len(shapes.SUBJECT_CAPTIONS) / (len(shapes.SUBJECT_CAPTIONS) + len(shapes.TWO_OBJECT_CAPTIONS))
    assert abs(subject_only / (two * SMALL.captions_per_image) - share) < 0.05
    first_words = {s["txt"].split()[0] for s in samples["train"]}
    assert first_words >= {"a", "an", "there"}
    assert len({s["txt"] for s in samples["train"]}) > 200


def test_captions_per_image_is_checked():
    with pytest.raises(ValueError, match="captions_per_image must be in"):
        ShapesSpec(captions_per_image=len(shapes.ONE_OBJECT_CAPTIONS) + 1)
    with pytest.raises(ValueError, match="captions_per_image must be in"):
        ShapesSpec(captions_per_image=0)


def test_every_attribute_appears(small):
    _, _, samples = small
    objects = [o for s in samples["train"] for o in s["json"]["objects"]]
    assert {o["color"] for o in objects} == set(shapes.COLORS)
    assert {o["shape"] for o in objects} == set(shapes.SHAPES)
    assert {o["size"] for o in objects} == set(shapes.SIZES)
    assert {o["position"] for o in objects} == set(shapes.POSITIONS)
    assert {s["json"]["background"] for s in samples["train"]} == set(shapes.BACKGROUNDS)


def test_pixels_show_object_and_background_colours(small):
    _, _, samples = small
    for s in samples["train"] + samples["heldout"]:
        image, primary = s["image"].astype(int), s["json"]["objects"][0]
        x0, y0, x1, y1 = primary["bbox"]
        centre = image[int((y0 + y1) / 2), int((x0 + x1) / 2)]
        tolerance = 0 if primary["shape"] in ("circle", "square") else 2
        assert np.abs(centre - shapes.COLORS[primary["color"]]).max() <= tolerance, (primary, centre)
        lo, hi = shapes.BACKGROUNDS[s["json"]["background"]]
        corner = image[0, 0]  # objects keep a margin from the border
        assert corner[0] == corner[1] == corner[2] and lo <= corner[0] <= hi


def test_byte_identical_for_any_worker_count_and_seed_sensitive(small, tmp_path):
    root, _, _ = small
    generate_shapes(tmp_path / "again", SMALL, workers=1)
    assert _file_bytes(tmp_path / "again") == _file_bytes(root)
    other = ShapesSpec(seed=1, train=100, test=10, heldout=10, samples_per_shard=100)
    generate_shapes(tmp_path / "seed1", other, workers=1)
    assert (tmp_path / "seed1/train/000000.tar").read_bytes() != (root / "train/000000.tar").read_bytes()


def test_smaller_split_is_a_prefix(small, tmp_path):
    root, _, _ = small
    generate_shapes(tmp_path, ShapesSpec(seed=0, train=100, test=10, heldout=10, samples_per_shard=100), workers=1)
    assert (tmp_path / "train/000000.tar").read_bytes() == (root / "train/000000.tar").read_bytes()


def test_regenerate_is_a_noop_when_complete(tmp_path):
    manifest = generate_shapes(tmp_path, TINY, workers=1)
    before = _mtimes(tmp_path)
    assert generate_shapes(tmp_path, TINY, workers=1) == manifest
    assert _mtimes(tmp_path) == before


def test_partial_or_different_dataset_is_regenerated(tmp_path):
    generate_shapes(tmp_path, TINY, workers=1)
    reference = _file_bytes(tmp_path)

    (tmp_path / "manifest.json").unlink()  # a crashed run: shards but no manifest
    (tmp_path / "train/000000.tar").write_bytes(b"truncated")
    (tmp_path / "train/000007.tar").write_bytes(b"stale")
    generate_shapes(tmp_path, TINY, workers=1)
    assert _file_bytes(tmp_path) == reference

    (tmp_path / "test/000000.tar").unlink()  # manifest present but a shard missing
    generate_shapes(tmp_path, TINY, workers=1)
    assert _file_bytes(tmp_path) == reference

    fewer = ShapesSpec(seed=0, train=10, test=10, heldout=10, samples_per_shard=10)
    manifest = generate_shapes(tmp_path, fewer, workers=1)
    assert manifest["spec"]["train"] == 10
    assert sorted(p.name for p in (tmp_path / "train").glob("*.tar")) == ["000000.tar"]


def test_cli_prints_summary(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--out", str(out), "--train", "10", "--test", "5", "--heldout", "5", "--samples-per-shard", "4"]
    shapes.main([*args, "--seed", "3", "--image-size", "32", "--workers", "1", "--quiet"])
    text = capsys.readouterr().out
    assert "train/{000000..000002}.tar" in text and "heldout" in text
    manifest = shards.read_manifest(out)
    assert manifest["spec"]["seed"] == 3 and manifest["spec"]["image_size"] == 32
    image = Image.open(io.BytesIO(shards.read_shard(out / "test/000000.tar")[0]["png"]))
    assert image.size == (32, 32)


def test_bad_worker_count(tmp_path):
    with pytest.raises(ValueError, match="workers"):
        generate_shapes(tmp_path, TINY, workers=0)
