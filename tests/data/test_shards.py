import json
import tarfile

import pytest
import webdataset as wds

from multimodal.data import shards


def _samples(n: int, prefix: str = "s") -> list[dict]:
    return [
        {"__key__": f"{prefix}{i:04d}", "png": bytes([i % 256]) * (i + 1), "txt": f"caption {i}", "json": {"i": i}}
        for i in range(n)
    ]


def test_names_and_patterns():
    assert shards.shard_name(0) == "000000.tar"
    assert shards.shard_name(123) == "000123.tar"
    assert shards.shard_pattern(20) == "{000000..000019}.tar"
    assert shards.shard_pattern(1) == "{000000..000000}.tar"
    assert wds.shardlists.expand_urls(shards.shard_pattern(3)) == ["000000.tar", "000001.tar", "000002.tar"]
    assert shards.num_shards(2000, 1000) == 2
    assert shards.num_shards(2001, 1000) == 3
    assert shards.num_shards(1, 1000) == 1
    for bad in (lambda: shards.shard_pattern(0), lambda: shards.num_shards(0, 10), lambda: shards.num_shards(5, 0)):
        with pytest.raises(ValueError):
            bad()


def test_write_split_layout_and_stats(tmp_path):
    names = shards.write_split(tmp_path, _samples(250), samples_per_shard=100)
    assert names == ["000000.tar", "000001.tar", "000002.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*names, "000000_stats.json", "000001_stats.json", "000002_stats.json"]
    )
    counts = [len(shards.read_shard(tmp_path / n)) for n in names]
    assert counts == [100, 100, 50]
    stats = json.loads((tmp_path / "000002_stats.json").read_text())
    assert stats["count"] == 50 and stats["successes"] == 50

    with tarfile.open(tmp_path / "000000.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members[:3]] == ["s0000.json", "s0000.png", "s0000.txt"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
        (shards.TAR_MTIME, 0, 0, "", "", shards.TAR_MODE)
    }

    first = shards.read_shard(tmp_path / "000001.tar")[0]
    assert first["__key__"] == "s0100"
    assert first["png"] == bytes([100]) * 101
    assert first["txt"] == b"caption 100"
    assert json.loads(first["json"]) == {"i": 100}


def test_webdataset_reads_the_brace_pattern(tmp_path):
    shards.write_split(tmp_path, _samples(25), samples_per_shard=10)
    url = str(tmp_path / shards.shard_pattern(3))
    got = list(wds.WebDataset(url, shardshuffle=False).decode())
    assert [s["__key__"] for s in got] == [f"s{i:04d}" for i in range(25)]
    assert got[7]["txt"] == "caption 7"
    assert got[7]["json"] == {"i": 7}


def test_byte_identical_across_runs(tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    shards.write_split(a, _samples(30), samples_per_shard=16)
    shards.write_split(b, _samples(30), samples_per_shard=16)
    for name in ("000000.tar", "000001.tar", "000001_stats.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    shards.write_split(b, _samples(30, prefix="t"), samples_per_shard=16)
    assert (a / "000000.tar").read_bytes() != (b / "000000.tar").read_bytes()


def test_stale_shards_are_removed(tmp_path):
    shards.write_split(tmp_path, _samples(50), samples_per_shard=10)
    (tmp_path / "000009.tar.tmp").write_bytes(b"crash leftover")
    (tmp_path / "notes.txt").write_text("kept")
    assert shards.write_split(tmp_path, _samples(15), samples_per_shard=10) == ["000000.tar", "000001.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "000000.tar",
        "000000_stats.json",
        "000001.tar",
        "000001_stats.json",
        "notes.txt",
    ]


def test_bad_samples_raise(tmp_path):
    with pytest.raises(ValueError, match="__key__"):
        shards.write_split(tmp_path, [{"png": b"x"}], samples_per_shard=10)
    with pytest.raises(ValueError, match="__key__"):
        shards.write_split(tmp_path, [{"__key__": "a.b", "png": b"x"}], samples_per_shard=10)
    with pytest.raises(ValueError, match="duplicate"):
        shards.write_split(
            tmp_path, [{"__key__": "a", "png": b"x"}, {"__key__": "a", "png": b"y"}], samples_per_shard=10
        )
    with pytest.raises(ValueError, match="must be bytes"):
        shards.write_split(tmp_path, [{"__key__": "a", "png": 3.0}], samples_per_shard=10)
    with pytest.raises(ValueError, match="no samples"):
        shards.write_split(tmp_path, [], samples_per_shard=10)
    with pytest.raises(ValueError, match="samples_per_shard"):
        shards.write_split(tmp_path, _samples(3), samples_per_shard=0)


def test_manifest_marks_completion(tmp_path):
    assert not shards.is_complete(tmp_path)
    assert shards.read_manifest(tmp_path) is None
    (tmp_path / shards.MANIFEST_NAME).write_text("{not json")
    assert not shards.is_complete(tmp_path)

    shards.write_split(tmp_path / "train", _samples(12), samples_per_shard=5)
    manifest = {"splits": {"train": {"shards": "train/{000000..000002}.tar", "num_samples": 12, "num_shards": 3}}}
    shards.write_manifest(tmp_path, manifest)
    assert shards.is_complete(tmp_path)
    assert shards.read_manifest(tmp_path) == manifest
    assert not list(tmp_path.glob("*.tmp"))
    assert shards.split_files_present(tmp_path, manifest)
    (tmp_path / "train" / "000002.tar").unlink()
    assert not shards.split_files_present(tmp_path, manifest)

    shards.remove_manifest(tmp_path)
    assert not shards.is_complete(tmp_path)
