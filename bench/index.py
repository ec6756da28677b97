"""Exact vs approximate embedding search (faiss, as eval.index builds it): recall@10, build time, query latency.

    python bench/index.py [--n 100000 --dim 512 --clusters 1000 --noise 1.0 --queries 1000 --threads N] [--out F]

The collection stands in for the CLIP image embeddings of a large image set: ``--clusters`` random unit centres
(concepts), each vector its centre plus isotropic Gaussian noise of expected norm ``--noise``, normalised (at 1.0:
cosine about 0.7 to its centre, about 0.5 to another member of its cluster, about 0 across clusters; at 3.0 the
clusters all but dissolve into uniform noise, the hardest case for any approximate search); ``--queries`` more
vectors drawn the same way (not in the collection) query it; everything comes from ``--seed``. Each index is the
one ``multimodal.evaluation.index.build_faiss_index`` builds for ``eval.index build --kind ...``; exact search
(``IndexFlatIP``) gives the true top 10, against which the approximate ones' recall@10 is measured (the share of the
true top 10 found). Latency is faiss's ``search`` alone: the median over single queries (batch of 1), and the median
batch time over batches of 100 divided by 100 (per query). Prints a table; ``--out`` writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, when run as a script

K = 10


def clustered_unit_vectors(
    n: int, dim: int, clusters: int, *, noise: float = 1.0, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(collection (n, dim), cluster centres (clusters, dim)): unit vectors around random unit centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return around(centres, n, noise, rng), centres


def around(centres: np.ndarray, n: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` unit vectors, each a random centre plus Gaussian noise of norm about ``noise``, normalised."""
    dim = centres.shape[1]
    x = centres[rng.integers(0, len(centres), n)]
    x = x + noise * rng.standard_normal((n, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of ``truth`` (Q, k) ids that the same row of ``found`` holds."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def latencies(index: Any, queries: np.ndarray, *, singles: int, batch: int = 100) -> tuple[float, float]:
    """(median seconds of one query searched alone, median seconds a query in batches of ``batch``)."""
    one = []
    for q in queries[:singles]:
        start = time.perf_counter()
        index.search(q[None], K)
        one.append(time.perf_counter() - start)
    batched = []
    for i in range(0, len(queries) - batch + 1, batch):
        start = time.perf_counter()
        index.search(queries[i : i + batch], K)
        batched.append((time.perf_counter() - start) / batch)
    return statistics.median(one), statistics.median(batched) if batched else float("nan")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build each index, measure it, return the figures."""
    import torch

    from multimodal.evaluation.index import IndexSpec, build_faiss_index

    torch.set_num_threads(args.threads)  # faiss follows PyTorch's thread count (multimodal.evaluation.index._faiss)
    data, centres = clustered_unit_vectors(args.n, args.dim, args.clusters, noise=args.noise, seed=args.seed)
    queries = around(centres, args.queries, args.noise, np.random.default_rng(args.seed + 1))
    specs = [
        IndexSpec("exact"),
        IndexSpec("ivf", nlist=args.nlist, nprobe=args.nprobe),
        IndexSpec("hnsw", m=args.hnsw_m, ef_construction=args.ef_construction, ef_search=args.ef_search),
    ]
    rows, truth = [], None
    for spec in specs:
        start = time.perf_counter()
        index = build_faiss_index(data, spec)
        build_s = time.perf_counter() - start
        _, found = index.search(queries, K)
        truth = found if truth is None else truth  # exact comes first
        one, per_query = latencies(index, queries, singles=min(args.singles, args.queries))
        rows.append({
            "kind": spec.kind, "index": spec.resolved(args.n).describe(), "build_s": build_s,
            "recall_at_10": recall_at_k(found, truth), "p50_ms_batch_1": one * 1e3,
            "p50_ms_per_query_batch_100": per_query * 1e3,
        })  # fmt: skip
    return {
        "n": args.n, "dim": args.dim, "clusters": args.clusters, "noise": args.noise, "queries": args.queries,
        "seed": args.seed,
        "threads": args.threads, "faiss": _faiss_version(), "rows": rows,
    }  # fmt: skip


def _faiss_version() -> str:
    import faiss

    return faiss.__version__


def format_table(figures: dict[str, Any]) -> str:
    """The figures as a Markdown table, one row an index."""
    lines = [
        f"{figures['n']:,} unit vectors, {figures['dim']}-d, {figures['clusters']} clusters, noise "
        f"{figures['noise']}; {figures['queries']} queries; {figures['threads']} thread(s); faiss {figures['faiss']}",
        "| index | build s | recall@10 | p50 ms, batch of 1 | p50 ms a query, batch of 100 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in figures["rows"]:
        lines.append(
            f"| {r['index']} | {r['build_s']:.2f} | {r['recall_at_10']:.4f} | {r['p50_ms_batch_1']:.3f} | "
            f"{r['p50_ms_per_query_batch_100']:.4f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="vectors in the collection")
    parser.add_argument("--dim", type=int, default=512, help="their width (CLIP ViT-B: 512)")
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=1.0, help="noise norm around a centre (unit norm)")
    parser.add_argument("--queries", type=int, default=1000, help="query vectors (multiples of 100 batch evenly)")
    parser.add_argument("--singles", type=int, default=300, help="queries timed one at a time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nlist", type=int, help="ivf cells (default: eval.index's, 4 sqrt(n))")
    parser.add_argument("--nprobe", type=int, help="ivf cells searched (default: eval.index's, nlist / 16)")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=80)
    parser.add_argument("--ef-search", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for faiss")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    figures = run(args)
    print(format_table(figures))
    if args.out is not None:
        from multimodal.io import atomic_write_json

        atomic_write_json(args.out, figures)
        print(f"wrote {args.out}")
    return figures


if __name__ == "__main__":
    main()
