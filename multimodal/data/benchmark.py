"""CLIP_benchmark's WebDataset evaluation layout: export any dataset card's split to it, and read such folders back.

``python -m multimodal.data.benchmark --dataset shapes --split test --out bench/shapes`` writes::

    bench/shapes/test/nshards.txt                    the number of shards, N
    bench/shapes/test/0.tar ... N-1.tar              s0000000.png + .cls (class index) + .txt (captions, one a line)
    bench/shapes/classnames.txt                      one class name a line, in class-index order
    bench/shapes/zeroshot_classification_templates.txt   the card's prompt templates, "{c}" for the class name
    bench/shapes/dataset_type.txt                    "retrieval", only for --type retrieval

which ``clip_benchmark eval --dataset wds/shapes --dataset_root bench/shapes`` reads unchanged (its
``build_wds_dataset``). A folder serves one CLIP_benchmark task: without ``dataset_type.txt`` zero-shot
classification (image + ``cls``), with it retrieval (image + ``txt``); export twice for both. Class names and
templates are those ``eval.zeroshot`` uses (:func:`card_prompts`). Images are copied byte for byte where CLIP_benchmark
decodes them (png, jpg, webp) and both readers see the same pixels (8-bit RGB or grey); any other image is written as
a PNG of the RGB image this project's decoder makes of it. The folder is built beside ``--out`` and renamed into place.

``eval.zeroshot`` and ``eval.retrieval`` read such folders back (``--dataset wds:DIR``, or any folder holding
``<split>/nshards.txt``): :func:`load_dataset_card` makes their card, :class:`BenchmarkDecoder` decodes the samples.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import string
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..cli import HelpFormatter, run_cli
from ..config import ConfigError
from ..io import atomic_dir
from .constants import IMAGE_KEYS

if TYPE_CHECKING:  # torch, webdataset and PIL are imported where they are used: --help needs none of them
    from .cards import DatasetCard
    from .transforms import SampleDecoder

__all__ = [
    "BENCHMARK_IMAGE_KEYS",
    "BenchmarkDecoder",
    "benchmark_card",
    "card_prompts",
    "export_benchmark",
    "is_benchmark_card",
    "is_benchmark_folder",
    "load_dataset_card",
    "main",
]

BENCHMARK_IMAGE_KEYS = ("webp", "png", "jpg", "jpeg")  # the image members CLIP_benchmark decodes, in its order
NSHARDS, CLASSNAMES, TEMPLATES, DATASET_TYPE = (
    "nshards.txt", "classnames.txt", "zeroshot_classification_templates.txt", "dataset_type.txt",
)  # fmt: skip
SAMPLES_PER_SHARD = 10_000  # CLIP_benchmark's own export (clip_benchmark_export_wds --max-count)
_SAME_PIXELS = ("RGB", "L")  # modes that CLIP_benchmark's convert("RGB") and this project's to_rgb read alike
_ENCODE = {"png": {"format": "PNG"}, "webp": {"format": "WEBP", "lossless": True}}

Kind = Literal["classification", "retrieval"]


# -- prompts ---------------------------------------------------------------------------------------------------------
def card_prompts(card: DatasetCard, label: str, templates: str | None = None) -> tuple[list[str], list[str]]:
    """Class names and prompt templates (``{}`` for the class name) of zero-shot classification on ``card``'s
    ``label``: the card's; an ImageNet folder (1,000 WordNet-id classes) gets open_clip's ImageNet class names and the
    80 OpenAI templates; ``templates`` "openai" (those 80) or "simple" (open_clip's short set) replace the card's."""
    names = list(card.class_names(label))
    wordnet = len(names) == 1000 and all(re.fullmatch(r"n\d{8}", n) for n in names)
    if templates not in (None, "openai", "simple"):
        raise ConfigError(f"--templates must be 'openai', 'simple' or omitted (the card's), got {templates!r}")
    if wordnet or templates is not None:
        from open_clip.zero_shot_metadata import (
            IMAGENET_CLASSNAMES,
            OPENAI_IMAGENET_TEMPLATES,
            SIMPLE_IMAGENET_TEMPLATES,
        )

        names = list(IMAGENET_CLASSNAMES) if wordnet else names
        chosen = SIMPLE_IMAGENET_TEMPLATES if templates == "simple" else OPENAI_IMAGENET_TEMPLATES
        return names, [t("{}") for t in chosen]
    if not card.templates:
        raise ConfigError(
            f"dataset {card.name!r} has no prompt templates ({card.source}); add them to it "
            f"({TEMPLATES} for a CLIP_benchmark folder) or pass --templates openai or simple"
        )
    return names, list(card.templates)


def _rename_field(template: str, old: str, new: str) -> str:
    """``template`` with its one replacement field ``{old}`` written ``{new}`` (``{}`` <-> CLIP_benchmark's
    ``{c}``), escaped braces kept; a ValueError for any other field, or none."""
    parts, fields = [], 0
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"prompt template {template!r} is malformed: {e}") from None
    for literal, field, spec, conversion in parsed:
        parts.append(literal.replace("{", "{{").replace("}", "}}"))
        if field is None:
            continue
        if field != old or spec or conversion:
            break
        parts.append(f"{{{new}}}")
        fields += 1
    else:
        if fields == 1:
            return "".join(parts)
    raise ValueError(f"prompt template {template!r} must hold the class name once, as {{{old}}}")


# -- reading a CLIP_benchmark folder ---------------------------------------------------------------------------------
def is_benchmark_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder in CLIP_benchmark's layout: some ``<split>/nshards.txt`` in it."""
    path = Path(path).expanduser()
    return path.is_dir() and any(path.glob(f"*/{NSHARDS}"))


def load_dataset_card(dataset: str | Path) -> DatasetCard:
    """:func:`~multimodal.data.load_card`, plus CLIP_benchmark folders: ``wds:DIR``, or a folder holding
    ``<split>/nshards.txt``."""
    text = str(dataset)
    if text.startswith("wds:"):
        path = Path(text.removeprefix("wds:")).expanduser()
        if not is_benchmark_folder(path):
            raise ConfigError(
                f"{path} is not a CLIP_benchmark WebDataset folder: it needs <split>/{NSHARDS} beside <split>/0.tar; "
                "export one with `python -m multimodal.data.benchmark --dataset CARD --out DIR`"
            )
        return benchmark_card(path)
    if is_benchmark_folder(text):
        return benchmark_card(text)
    from .cards import load_card

    return load_card(text)


def benchmark_card(path: str | Path) -> DatasetCard:
    """The card of a CLIP_benchmark folder: its splits (``<split>/{0..N-1}.tar``), the label ``cls`` named by
    ``classnames.txt`` and the templates of ``zeroshot_classification_templates.txt`` (none where they are missing)."""
    from .cards import DatasetCard, SplitSpec
    from .stream import expected_count

    root = Path(path).expanduser().resolve()
    splits = {}
    for nshards in sorted(root.glob(f"*/{NSHARDS}")):
        split = nshards.parent.name
        count = nshards.read_text(encoding="utf-8").strip()
        if not count.isdigit() or int(count) < 1:
            raise ConfigError(f"{nshards} must hold the number of shards (a positive integer), not {count!r}")
        pattern = f"{split}/{{0..{int(count) - 1}}}.tar" if int(count) > 1 else f"{split}/0.tar"
        counts = [expected_count(str(root / split / f"{i}.tar")) for i in range(int(count))]
        total = sum(counts) if None not in counts else None
        splits[split] = SplitSpec(shards=pattern, num_samples=total)
    classes = _read_lines(root / CLASSNAMES)
    templates = [t for t in _read_lines(root / TEMPLATES) or () if t]
    kind = (_read_lines(root / DATASET_TYPE) or ["classification"])[0].lower()
    try:
        templates = tuple(_rename_field(t, "c", "") for t in templates)
    except ValueError as e:
        raise ConfigError(f"{root / TEMPLATES}: {e}") from None
    return DatasetCard(
        name=root.name,
        description=f"CLIP_benchmark WebDataset folder ({kind})",
        root=str(root),
        image_key=";".join(BENCHMARK_IMAGE_KEYS),
        splits=splits,
        labels={"cls": tuple(classes)} if classes else {},
        templates=templates,
        source=str(root),
    )


def _read_lines(path: Path) -> list[str] | None:
    """The stripped lines of a text file, as CLIP_benchmark reads its metadata; None when there is no such file."""
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]


def is_benchmark_card(card: DatasetCard) -> bool:
    """True for a card :func:`benchmark_card` made (of a CLIP_benchmark folder)."""
    return card.format == "wds" and is_benchmark_folder(card.source)


def _class_index(sample: dict[str, Any]) -> dict[str, Any]:
    """``sample`` with its ``cls`` member, the text of a class index, read as an int (as webdataset decodes it)."""
    from .stream import DecodeError

    value = sample.get("cls")
    if not isinstance(value, (bytes, str)):
        return sample
    try:
        return {**sample, "cls": int(value)}
    except ValueError:
        raise DecodeError("missing label", f"cls {value!r} is not an integer class index") from None


def _caption_lines(sample: dict[str, Any]) -> list[str]:
    """The captions of a CLIP_benchmark retrieval sample: the lines of its ``txt`` member, whitespace tidied."""
    from .stream import DecodeError

    raw = sample.get("txt")
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    captions = [" ".join(line.split()) for line in (text or "").splitlines()]
    if not any(captions):
        raise DecodeError("missing caption")
    return [c for c in captions if c]


@dataclass(frozen=True)
class BenchmarkDecoder:
    """``decoder`` (a :class:`SampleDecoder`) for CLIP_benchmark samples: the ``cls`` member, the text of a class
    index, is the label; with ``captions`` the ``txt`` member holds the image's captions, one a line, and the decoded
    sample's ``"text"`` is their list. The inner decoder takes ``label_key="cls"`` (or None) and no ``text_key``."""

    decoder: SampleDecoder
    captions: bool = False

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = self.decoder(_class_index(sample))
        if self.captions:
            out["text"] = _caption_lines(sample)
        return out


# -- export ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _ExportSample:
    """A raw sample of a card -> the members of its CLIP_benchmark sample: the image, ``cls``, ``txt``; a
    ``DecodeError`` (the sample is skipped and counted) for an undecodable image or a missing required field: the
    label for classification, a caption for retrieval (the other is written where the sample has it)."""

    card: DatasetCard
    label: str | None
    kind: Kind
    image_format: Literal["keep", "png", "webp"]

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        from .stream import DecodeError
        from .transforms import SampleDecoder

        out = self._image(sample)
        if self.label is not None:
            try:
                out["cls"] = str(SampleDecoder(image_size=1, label_key=self.label)._label(_class_index(sample)))
            except DecodeError:
                if self.kind == "classification":
                    raise
        try:
            out["txt"] = "\n".join(self._captions(sample))
        except DecodeError:
            if self.kind == "retrieval":
                raise
        return out

    def _image(self, sample: dict[str, Any]) -> dict[str, bytes]:
        """The image member: the source bytes where CLIP_benchmark decodes them and reads the same pixels as this
        project (and ``image_format`` is "keep"), else the RGB image :func:`to_rgb` makes, encoded anew."""
        from PIL import Image, UnidentifiedImageError

        from .stream import DecodeError
        from .transforms import to_rgb

        if "__path__" in sample:  # an image folder's file
            ext = Path(sample["__path__"]).suffix.lstrip(".").lower()
            data = Path(sample["__path__"]).read_bytes()
        else:
            keys = self.card.image_key.lower().split(";") if self.card.image_key else IMAGE_KEYS
            ext = next((k for k in keys if sample.get(k)), "")
            data = sample.get(ext, b"")
        if not data:
            raise DecodeError("missing image")
        encoding = "png" if self.image_format == "keep" else self.image_format
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                if self.image_format == "keep" and ext in BENCHMARK_IMAGE_KEYS and img.mode in _SAME_PIXELS:
                    return {ext: data}
                buf = io.BytesIO()
                to_rgb(img).save(buf, **_ENCODE[encoding])
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DecodeError("image too large", str(e)) from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
            raise DecodeError("corrupt image", str(e)) from None
        return {encoding: buf.getvalue()}

    def _captions(self, sample: dict[str, Any]) -> list[str]:
        """Every caption of the sample: a CLIP_benchmark sample's lines; the card's ``captions_key`` list (COCO's
        five), where the sample's ``.json`` has one; else its one ``text_key`` caption."""
        from .transforms import SampleDecoder

        if is_benchmark_card(self.card):
            return _caption_lines(sample)
        if self.card.captions_key:
            try:
                listed = json.loads(sample["json"])[self.card.captions_key]
            except (KeyError, TypeError, ValueError):
                listed = None
            captions = [" ".join(c.split()) for c in listed if isinstance(c, str)] if isinstance(listed, list) else []
            if any(captions):
                return [c for c in captions if c]
        return [SampleDecoder(image_size=1, text_key=self.card.text_key)._text(sample)]


def export_benchmark(
    dataset: str | Path | DatasetCard,
    out: str | Path,
    *,
    splits: Sequence[str] = ("test",),
    label: str | None = None,
    kind: Kind | None = None,
    templates: str | None = None,
    image_format: Literal["keep", "png", "webp"] = "keep",
    samples_per_shard: int = SAMPLES_PER_SHARD,
    force: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Write ``splits`` of ``dataset`` (a card, its name or path, anything ``--dataset`` takes) to ``out`` in
    CLIP_benchmark's WebDataset layout; returns what was written (label, type, samples and shards per split).

    ``label``: the label key whose class index is ``cls`` (default: the card's first). ``kind``: "classification"
    (default with a label) or "retrieval" (``dataset_type.txt``; samples without a caption are skipped instead of those
    without a label). ``templates``: as :func:`card_prompts`. ``image_format``: "keep" (copy what CLIP_benchmark reads
    alike, else PNG), or "png" / lossless "webp" for every image. An existing non-empty ``out`` is replaced only with
    ``force``.
    """
    from .cards import DatasetCard, ensure_dataset

    card = dataset if isinstance(dataset, DatasetCard) else load_dataset_card(dataset)
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; give the folder to write")
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"--out {out} exists and is not empty; pass --force to replace it")
    for split in splits:
        card.split(split)
    if label is None:
        label = next(iter(card.labels), None)
    classnames, prompts = card_prompts(card, label, templates) if label is not None else ([], [])
    kind = kind or ("classification" if label is not None else "retrieval")
    if kind not in ("classification", "retrieval"):
        raise ConfigError(f"the type must be 'classification' or 'retrieval', got {kind!r}")
    if kind == "classification" and label is None:
        raise ConfigError(f"dataset {card.name!r} has no labels to classify; export it with --type retrieval")
    if image_format not in ("keep", *_ENCODE):
        raise ConfigError(f"the image format must be 'keep', 'png' or 'webp', got {image_format!r}")
    if samples_per_shard < 1:
        raise ConfigError(f"--samples-per-shard must be >= 1, got {samples_per_shard}")
    try:
        prompts = [_rename_field(t, "", "c") for t in prompts]
    except ValueError as e:
        raise ConfigError(f"dataset {card.name!r}: {e}") from None
    ensure_dataset(card, progress=progress)

    prepare = _ExportSample(card, label, kind, image_format)
    with atomic_dir(out) as tmp:
        written = {s: _export_split(card, s, tmp / s, prepare, samples_per_shard, progress) for s in splits}
        if label is not None:
            _write_lines(tmp / CLASSNAMES, classnames)
            _write_lines(tmp / TEMPLATES, prompts)
        if kind == "retrieval":
            _write_lines(tmp / DATASET_TYPE, ["retrieval"])
    return {"dataset": card.name, "out": str(out), "type": kind, "label": label, "splits": written}


def _export_split(
    card: DatasetCard, split: str, folder: Path, prepare: _ExportSample, samples_per_shard: int, progress: bool
) -> dict[str, Any]:
    """Write one split, in the order of the card's ordered pass, as ``0.tar, 1.tar, ...`` and ``nshards.txt``."""
    from tqdm.auto import tqdm

    from .shards import write_shard
    from .stream import SampleStream, SkipStats, folder_samples

    source: dict[str, Any] = (
        {"items": folder_samples(card.folder(split))} if card.format == "folder" else {"urls": card.shard_urls(split)}
    )
    stream = SampleStream(
        **source, decode=prepare, collate=lambda samples: {"samples": samples}, batch_size=256, infinite=False,
        shuffle_buffer=0,
    )  # fmt: skip
    skips, shard, count, shards = SkipStats(), [], 0, 0
    folder.mkdir(parents=True)
    for batch in tqdm(stream, desc=f"{card.name}/{split}", disable=not progress, leave=False):
        skips.update(batch.pop("skipped"))
        for sample in batch.get("samples", []):
            shard.append({"__key__": f"s{count:07d}", **sample})
            count += 1
            if len(shard) == samples_per_shard:
                shards += write_shard(folder / f"{shards}.tar", shard) > 0
                shard = []
    if shard:
        shards += write_shard(folder / f"{shards}.tar", shard) > 0
    if not count:
        raise ValueError(f"no sample of {card.name}/{split} could be exported; {skips.summary() or 'it is empty'}")
    _write_lines(folder / NSHARDS, [str(shards)])
    return {"samples": count, "shards": shards, **skips.to_json()}


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    """``lines`` to ``path``, one a line (UTF-8), atomically."""
    from ..io import atomic_write_bytes

    atomic_write_bytes(path, "".join(f"{line}\n" for line in lines).encode("utf-8"))


# -- command line ----------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    """Export, then say what was written."""
    result = export_benchmark(
        args.dataset, args.out_dir, splits=args.split or ["test"], label=args.label, kind=args.type,
        templates=args.templates, image_format=args.image_format, samples_per_shard=args.samples_per_shard,
        force=args.force, progress=not args.quiet,
    )  # fmt: skip
    what = f"label {result['label']}" if result["label"] else "no label"
    print(f"{result['dataset']} -> {result['out']} (CLIP_benchmark {result['type']}, {what})")
    for split, info in result["splits"].items():
        skipped = f", {info['skipped_samples']} skipped" if info["skipped_samples"] else ""
        print(f"  {split:<10} {info['samples']:>7} samples in {info['shards']} shard(s){skipped}")
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m multimodal.data.benchmark --dataset CARD --split test --out DIR``."""
    parser = argparse.ArgumentParser(
        prog="python -m multimodal.data.benchmark", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--dataset", required=True, help="card name, card path, shards, image folder or CLIP_benchmark folder"
    )
    parser.add_argument("--split", action="append", help="split to export (repeatable; default: test)")
    parser.add_argument(
        "--out", dest="out_dir", metavar="DIR", required=True, help="folder to write (CLIP_benchmark's --dataset_root)"
    )
    parser.add_argument("--label", help="label key whose class index becomes cls (default: the card's first)")
    parser.add_argument(
        "--type", choices=("classification", "retrieval"),
        help="the CLIP_benchmark task the folder serves (default: classification; retrieval without labels)",
    )  # fmt: skip
    parser.add_argument("--templates", help="'openai' (80 ImageNet templates) or 'simple' (default: the card's)")
    parser.add_argument("--image-format", choices=("keep", "png", "webp"), default="keep", help="image encoding")
    parser.add_argument("--samples-per-shard", type=int, default=SAMPLES_PER_SHARD, help="samples per tar")
    parser.add_argument("--force", action="store_true", help="replace an existing non-empty --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return run_cli(run, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
