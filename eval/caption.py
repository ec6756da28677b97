"""Caption images with a GATO run and judge them: ``python -m eval.caption --checkpoint RUN [--split test]``.

A caption is right when the (colour, shape) pairs it names include the image's main object and name nothing that
is not in the image (``multimodal.pipelines.gato.judge_caption``). Captions are greedy. Prints the accuracy, the
share with the main object's colour right and its shape right, and a few examples; writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from multimodal import load_checkpoint
from multimodal.checkpoint import read_run_config
from multimodal.cli import HelpFormatter, add_threads_argument
from multimodal.config import ConfigError
from multimodal.data import SampleDecoder, SampleStream, SkipStats, collate, ensure_dataset, load_card, make_loader
from multimodal.data.cards import DatasetCard
from multimodal.data.stream import DecodeError
from multimodal.pipelines.gato import caption_images, judge_caption, named_pairs
from multimodal.tokenizers.gato import GatoTokenizer

from .common import run_cli, write_result

__all__ = ["evaluate_captioning", "main"]


class _WithObjects:
    """Decode the image in [0, 1] and read the objects' (colour, shape) from the sample's .json."""

    def __init__(self, image_size: int, image_key: str | None = None) -> None:
        self.decode = SampleDecoder(
            image_size=image_size, image_key=image_key, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)
        )

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = self.decode(sample)
        try:
            meta = json.loads(sample["json"])
            out["objects"] = [(o["color"], o["shape"]) for o in meta["objects"]]
        except (KeyError, TypeError, ValueError):
            raise DecodeError("missing objects", "the sample's .json has no objects list") from None
        return out


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    batch = collate(samples)
    batch["objects"] = [s["objects"] for s in samples]
    return batch


@torch.no_grad()
def evaluate_captioning(
    model: nn.Module,
    tokenizer: GatoTokenizer,
    card: DatasetCard,
    split: str,
    *,
    samples: int,
    image_size: int,
    batch_size: int = 100,
) -> tuple[dict[str, Any], SkipStats]:
    """Caption the first ``samples`` images of ``split`` and judge each against its objects."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    colours, shapes = card.labels.get("color"), card.labels.get("shape")
    if not colours or not shapes:
        raise ConfigError(f"dataset {card.name!r} has no color and shape labels to judge captions by")
    stream = SampleStream(
        urls=card.shard_urls(split), decode=_WithObjects(image_size, card.image_key), collate=_collate,
        batch_size=min(batch_size, samples), infinite=False, shuffle_buffer=0,
    )  # fmt: skip
    skips, right, colour_right, shape_right, examples, n = SkipStats(), 0, 0, 0, [], 0
    for batch in make_loader(stream, num_workers=0):
        skips.update(batch.pop("skipped"))
        if not batch["size"]:  # every sample of the batch was unusable
            continue
        keep = min(len(batch["key"]), samples - n)
        captions = caption_images(model, tokenizer, batch["image"][:keep])
        for caption, objects, key in zip(captions, batch["objects"][:keep], batch["key"][:keep], strict=True):
            ok = judge_caption(caption, objects, colours, shapes)
            pairs = named_pairs(caption, colours, shapes)  # parsed once for the colour and shape shares
            right += ok
            colour_right += objects[0][0] in {c for c, _ in pairs}
            shape_right += objects[0][1] in {s for _, s in pairs}
            if len(examples) < 8:
                examples.append({"key": key, "caption": caption, "objects": [list(o) for o in objects], "right": ok})
        n += keep
        if n >= samples:
            break
    if n == 0:
        raise ValueError(f"no decodable samples in {card.name}/{split}")
    return {
        "split": split,
        "n": n,
        "accuracy": right / n,
        "colour_named": colour_right / n,
        "shape_named": shape_right / n,
        "examples": examples,
    }, skips


def run(args: argparse.Namespace) -> dict[str, Any]:
    from .control import gato_tokenizer

    cfg = read_run_config(args.checkpoint, task="gato")
    model = load_checkpoint(args.checkpoint, ema=False if args.no_ema else None, device=args.device)
    tokenizer = gato_tokenizer(args.checkpoint, model)
    data = cfg.get("data") or {}
    mixture = (cfg.get("task") or {}).get("mixture") or {}
    name = args.dataset or next((n for n in mixture if load_card(n).generator != "control"), None)
    if name is None:
        raise ConfigError(f"the run at {args.checkpoint} trained on no captioned dataset; pass --dataset")
    card = load_card(name)
    ensure_dataset(card)
    results = {}
    print(f"{'split':8s} {'caption acc':>11s} {'colour':>7s} {'shape':>7s} {'n':>6s}")
    for split in args.split or ["test"]:
        out, skips = evaluate_captioning(
            model, tokenizer, card, split, samples=args.samples, image_size=int(data.get("image_size", 64))
        )
        print(f"{split:8s} {out['accuracy']:11.4f} {out['colour_named']:7.4f} {out['shape_named']:7.4f} {out['n']:6d}")
        for example in out["examples"][:3]:
            print(
                f"  {example['key']}: {example['caption']!r} (objects {example['objects']}, right={example['right']})"
            )
        if skips.total:
            print(skips.summary())
        results[split] = out
    path = Path(args.out) if args.out else Path(args.checkpoint) / "eval" / f"caption_{card.name}.json"
    write_result(path, {"checkpoint": str(args.checkpoint), "dataset": card.name, "results": results})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.caption", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="GATO run directory or checkpoints/step-* folder")
    parser.add_argument("--dataset", help="captioned dataset card (default: the run's captioned dataset)")
    parser.add_argument("--split", action="append", help="split to caption (repeatable; default: test)")
    parser.add_argument("--samples", type=int, default=1000, help="images per split")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights even if the run kept an EMA")
    parser.add_argument("--device", default="cpu", help="torch device to caption on, e.g. cuda")
    parser.add_argument("--out", help="JSON path (default: RUN/eval/caption_<dataset>.json)")
    add_threads_argument(parser)
    return run_cli(run, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
