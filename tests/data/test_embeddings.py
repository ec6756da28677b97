"""multimodal.data.embeddings: the cache of CLIP embeddings, valid only for the weights it came from."""

from __future__ import annotations

import pytest
import torch

from multimodal.data.embeddings import ClipEmbeddings, load_cache, save_cache, weights_fingerprint


def embeddings() -> ClipEmbeddings:
    torch.manual_seed(0)
    return ClipEmbeddings(
        keys=["a", "b", "c"],
        image_embeds=torch.nn.functional.normalize(torch.randn(3, 4), dim=-1),
        tokens=torch.randint(1, 100, (3, 2, 5)),
        num_captions=torch.tensor([1, 2, 1]),
    )


def test_cache_loads_back_only_for_the_same_weights(tmp_path):
    path = tmp_path / "embeddings" / "shapes-test.safetensors"
    assert load_cache(path, "abc") is None  # nothing cached yet
    original = embeddings()
    save_cache(original, path, fingerprint="abc", dataset="shapes", split="test")
    cached = load_cache(path, "abc")
    assert cached is not None and cached.keys == original.keys
    for name in ("image_embeds", "tokens", "num_captions"):
        assert torch.equal(getattr(cached, name), getattr(original, name))
    assert ClipEmbeddings.load(path)[1] == {
        "weights_sha256": "abc",
        "version": "1",
        "dataset": "shapes",
        "split": "test",
    }
    assert load_cache(path, "other weights") is None


def test_fingerprint_is_the_sha256_of_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"weights")
    assert (
        weights_fingerprint(path) == "9a129038d9a00aed0cf6a7ea059ca50a813449061ab87848cf1a13eafdf33b2c"
    )  # sha256sum of the file


def test_rows_and_captions():
    cache = embeddings()
    assert cache.rows(["c", "a"]).tolist() == [2, 0]
    with pytest.raises(KeyError, match="'z' has no cached CLIP embedding"):
        cache.rows(["z"])
    picked = cache.captions(torch.tensor([0, 0]))
    assert torch.equal(picked, cache.tokens[[0, 0], 0])  # one caption: always the first
    with pytest.raises(ValueError, match="duplicate sample keys"):
        ClipEmbeddings(keys=["a", "a"], image_embeds=torch.zeros(2, 4), tokens=torch.zeros(2, 1, 5),
                       num_captions=torch.ones(2))  # fmt: skip
