"""Build and query an embedding index of a collection's images with a CLIP run (faiss, as clip-retrieval does).

    python -m eval.index build --checkpoint runs/clip-shapes --dataset shapes --out runs/index-shapes
    python -m eval.index build --checkpoint runs/clip-shapes --dataset ~/photos --out runs/index-photos --kind hnsw
    python -m eval.index query --index runs/index-shapes --text "a red circle" --image query.png -k 5 [--json]

``build`` embeds every image of --dataset (a dataset card or name, WebDataset shards: a folder of them or a brace
pattern, or a folder of jpg/png/webp files searched recursively, keyed by their relative paths) in batches, each
written to disk as it is done; an unreadable image is skipped and counted. Rerun after a kill, it resumes after the
last finished batch, provided --checkpoint and --dataset are those it started with; into a finished index it
refuses unless --force. Search is exact (inner products of unit CLIP embeddings) unless --kind asks for IVF or HNSW.
``query`` prints each query's k nearest images (rank, cosine score, key, caption or label or path) or, with --json,
the hits as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from multimodal.cli import HelpFormatter, add_device_argument, add_threads_argument, run_cli

# torch, faiss and the library are imported by the subcommands: --help answers without them.

__all__ = ["main"]


def build(args: argparse.Namespace) -> dict[str, Any]:
    """Embed --dataset with the CLIP of --checkpoint into the index folder --out, resuming a build left there."""
    from multimodal.evaluation.index import ClipRecord, IndexBuilder, IndexSpec, open_collection
    from multimodal.runs import read_run_config, run_transform, run_weights

    spec = IndexSpec(
        kind=args.kind, nlist=args.nlist, nprobe=args.nprobe, m=args.hnsw_m,
        ef_construction=args.ef_construction, ef_search=args.ef_search,
    )  # fmt: skip
    cfg = read_run_config(args.checkpoint, task="clip")
    clip = ClipRecord.create(
        args.checkpoint, run_weights(args.checkpoint), cfg["model"]["name"], cfg["model"].get("args") or {},
        run_transform(cfg, where=Path(args.checkpoint)),
    )  # fmt: skip
    collection = open_collection(args.dataset, args.split)
    builder = IndexBuilder.open(args.index_dir, clip, collection, batch_size=args.batch_size, force=args.force)
    if done := builder.done_chunks():
        print(f"resuming {args.index_dir}: {len(done)} batches ({builder.done_items()} images) embedded before")
    result = builder.run(spec, device=args.device, workers=args.workers, progress=True)
    print(f"embedded {result.embedded} images in this run, {result.resumed} before it")
    if result.skipped.total or result.skipped.shards:
        print(result.skipped.summary())
    print(f"index of {result.count} images, {result.spec.describe()}, in {args.index_dir}")
    return {"count": result.count, "embedded": result.embedded, "resumed": result.resumed}


def query(args: argparse.Namespace) -> dict[str, Any]:
    """The --k nearest images of each --text and --image in the index --index, printed as a table or JSON."""
    from PIL import Image

    from multimodal.evaluation.index import EmbeddingIndex

    if not args.text and not args.image:
        raise ValueError("give at least one --text or --image to query with")
    index = EmbeddingIndex.load(args.index, device=args.device, nprobe=args.nprobe, ef_search=args.ef_search)
    queries: list[dict[str, Any]] = []
    if args.text:
        queries += [
            {"text": t, "hits": h} for t, h in zip(args.text, index.query_text(args.text, args.k), strict=True)
        ]
    if args.image:
        images = []
        for path in args.image:
            with Image.open(path) as image:  # a missing or unreadable file is an OSError: one line
                images.append(image.copy())  # read now; the transform takes any mode
        hits = index.query_image(images, args.k)
        queries += [{"image": str(p), "hits": h} for p, h in zip(args.image, hits, strict=True)]
    out = {"index": str(args.index), "k": args.k, "queries": queries}
    if args.json:
        print(
            json.dumps({**out, "queries": [{**q, "hits": [asdict(h) for h in q["hits"]]} for q in queries]}, indent=2)
        )
    else:
        print(format_hits(queries))
    return out


def format_hits(queries: list[dict[str, Any]]) -> str:
    """One block a query: its text (or image path), then a row a hit: rank, score, key, what the metadata says."""
    lines = []
    for q in queries:
        lines.append(f'text "{q["text"]}"' if "text" in q else f"image {q['image']}")
        lines.append(f"{'rank':>4}  {'score':>7}  {'key':<28}  caption / label / path")
        for h in q["hits"]:
            about = " | ".join(str(v) for v in (h.caption, h.label, h.path) if v is not None)
            lines.append(f"{h.rank:>4}  {h.score:>7.4f}  {h.key:<28}  {about}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The parser of both subcommands."""
    parser = argparse.ArgumentParser(
        prog="python -m eval.index", description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]), formatter_class=HelpFormatter,
    )  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("build", help="embed a collection and write its index", formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="the CLIP run (or checkpoints/step-* folder) to embed with")
    p.add_argument("--dataset", required=True, help="card name or path, WebDataset shards, or a folder of images")
    p.add_argument("--out", dest="index_dir", required=True, help="the index folder to write (or resume)")
    p.add_argument("--split", help="split of a card or of shards (default: test, else the only one)")
    p.add_argument(
        "--batch-size", type=int, help="images a batch, what the build writes at a time (default: 256, or what the "
        "build being resumed started with)",
    )  # fmt: skip
    p.add_argument("--kind", choices=("exact", "ivf", "hnsw"), default="exact", help="faiss index")
    p.add_argument("--nlist", type=int, help="ivf: k-means cells (default: 4 sqrt(N), at most N / 39)")
    p.add_argument("--nprobe", type=int, help="ivf: cells searched a query (default: nlist / 16, at least 8)")
    p.add_argument("--hnsw-m", type=int, default=32, help="hnsw: links a node")
    p.add_argument("--ef-construction", type=int, default=80, help="hnsw: candidates kept while adding")
    p.add_argument("--ef-search", type=int, default=128, help="hnsw: candidates kept a query")
    p.add_argument("--force", action="store_true", help="rebuild a finished index, or restart an unfinished one")
    p.add_argument(
        "--workers", type=int, choices=(0, 1), default=1, help="decode images in this process (0) or a background one"
    )
    add_device_argument(p, help="torch device to embed on")
    p.set_defaults(action=build)

    p = commands.add_parser("query", help="the nearest images of texts and images", formatter_class=HelpFormatter)
    p.add_argument("--index", required=True, help="an index folder eval.index build wrote")
    p.add_argument("--text", action="append", help="a text query (repeatable)")
    p.add_argument("--image", action="append", type=Path, help="an image file to query with (repeatable)")
    p.add_argument("-k", type=int, default=5, help="hits a query")
    p.add_argument("--json", action="store_true", help="print the hits as JSON instead of a table")
    p.add_argument("--nprobe", type=int, help="ivf: cells searched (default: what the index was built with)")
    p.add_argument("--ef-search", type=int, help="hnsw: candidates a query (default: what it was built with)")
    p.add_argument("--device", default="cpu", help="torch device for the CLIP that embeds the queries")
    p.set_defaults(action=query)

    for sub in commands.choices.values():
        add_threads_argument(sub)
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The chosen subcommand."""
    return args.action(args)


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
