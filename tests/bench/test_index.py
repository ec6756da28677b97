"""bench/index.py on a small collection: exact search is its own reference, IVF and HNSW reach the recall@10 the
benchmark holds them to, and the table and JSON carry the same figures."""

from __future__ import annotations

import json

import numpy as np

from bench.index import clustered_unit_vectors, main, recall_at_k


def test_small_benchmark_measures_recall_and_latency(tmp_path, capsys):
    out = tmp_path / "index.json"
    args = ["--n", "3000", "--dim", "32", "--clusters", "30", "--queries", "200", "--singles", "50", "--out", str(out)]
    figures = main(args)
    assert json.loads(out.read_text()) == figures
    exact, ivf, hnsw = figures["rows"]
    assert [r["kind"] for r in figures["rows"]] == ["exact", "ivf", "hnsw"]
    assert exact["recall_at_10"] == 1.0
    assert (
        ivf["index"] == "ivf (nlist 76, nprobe 8)"
    )  # eval.index's defaults for 3,000 vectors: N / 39 cells, 8 searched
    assert ivf["recall_at_10"] >= 0.95 and hnsw["recall_at_10"] >= 0.95
    assert all(
        r["build_s"] > 0 and r["p50_ms_batch_1"] > 0 and r["p50_ms_per_query_batch_100"] > 0 for r in (ivf, hnsw)
    )
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("3,000 unit vectors, 32-d, 30 clusters, noise 1.0; 200 queries; 1 thread(s)")
    assert table[3].split(" | ")[2] == "1.0000" and table[4].split(" | ")[2] == f"{ivf['recall_at_10']:.4f}"


def test_collection_is_seeded_unit_vectors_around_their_centres():
    data, centres = clustered_unit_vectors(500, 64, 5, seed=3)
    again, _ = clustered_unit_vectors(500, 64, 5, seed=3)
    assert np.array_equal(data, again) and data.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(data, axis=1), 1.0, atol=1e-5)
    nearest = (data @ centres.T).max(axis=1)  # cosine to its own centre: about 1 / sqrt(2)
    assert 0.6 < nearest.mean() < 0.8
    assert recall_at_k(np.array([[1, 2, 3]]), np.array([[3, 4, 1]])) == 2 / 3
