"""Dataset cards: one YAML per dataset saying where its data lives, its splits, classes and prompt templates.

``data.dataset`` (and ``--dataset`` of the eval CLIs) is one of:

- a card: a name (``shapes`` -> ``datasets/shapes.yaml``) or the path to a YAML file;
- WebDataset shards: a folder of ``*.tar`` (split ``train``), a folder of split subfolders of them
  (``train/*.tar``, ``val/*.tar``, ...), a brace pattern (``/data/mywds/{00000..00009}.tar``) or one ``.tar``;
- an image folder with class subfolders (``<root>/<class>/<image>``, optionally under split folders).

For shards and image folders the card is made on the fly. Relative ``root`` paths resolve against the data root:
``$MULTIMODAL_DATA`` if set, else ``./data``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import re
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import webdataset as wds

from ..config import Config, ConfigError, load_yaml, suggest
from ..io import exclusive_lock
from .stream import expected_count
from .transforms import IMAGE_KEYS

__all__ = ["DatasetCard", "SplitSpec", "data_root", "ensure_dataset", "find_cards_dir", "load_card"]

_REPO_ROOT = Path(__file__).resolve().parents[2]
_SPLIT_DIRS = ("train", "val", "validation", "test")  # split folders, in the order a card lists them
_MEMBER = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # a tar member -> (sample key, extension), as webdataset does
_META = re.compile(r"__[^/]*__($|/)")  # members webdataset skips
COUNT_LIMIT = 64  # shards without a _stats.json are counted member by member (tar headers only) up to this many
_ACCEPTED = (
    "a card name or .yaml path, a folder of WebDataset shards (*.tar, or split subfolders train/, val/, test/ "
    "of them), a brace pattern such as /data/mywds/{00000..00009}.tar, or an image folder with class subfolders "
    "(<root>/<class>/<image>); see datasets/README.md"
)


@dataclasses.dataclass(frozen=True)
class SplitSpec(Config):
    """One split: WebDataset shards (a brace pattern, relative to the card root) or an image folder."""

    shards: str | None = None
    path: str | None = None
    num_samples: int | None = None


@dataclasses.dataclass(frozen=True)
class DatasetCard(Config):
    """What a dataset is and where it lives. See ``datasets/README.md`` for the schema."""

    name: str
    description: str = ""
    format: Literal["wds", "folder"] = "wds"
    generator: str | None = None
    generator_args: dict[str, Any] = dataclasses.field(default_factory=dict)  # keyword arguments of the generator
    root: str = ""
    image_key: str | None = None  # the image member, e.g. jpg, or alternatives "jpg;png"; None: any image member
    text_key: str = "txt"
    captions_key: str | None = None  # a list field of the sample .json: alternative captions of the image
    splits: dict[str, SplitSpec] = dataclasses.field(default_factory=dict)
    labels: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    templates: tuple[str, ...] = ("a photo of a {}.",)
    heldout_combos: tuple[tuple[str, ...], ...] | None = None
    source: str = ""  # the card file (or the shards / folder it was made for), filled in by load_card

    @property
    def root_dir(self) -> Path:
        root = Path(os.path.expanduser(self.root))
        return root if root.is_absolute() else data_root() / root

    def split(self, name: str, *, key: str | None = None) -> SplitSpec:
        """The split ``name``; ``key``, the config key that chose it (``data.eval_split``), is named in the error."""
        if name not in self.splits:
            hint = f"; set {key} to one of: {', '.join(self.splits)}" if key else suggest(name, self.splits)
            raise ConfigError(f"dataset {self.name!r} has no split {name!r}{hint}")
        return self.splits[name]

    def class_names(self, label: str, *, key: str | None = None) -> tuple[str, ...]:
        """The class names of label ``label``; ``key`` (``data.label``) is named in the error."""
        if label not in self.labels:
            if not self.labels:
                hint = ": it has no labels at all (a card declares them under labels:, see datasets/README.md)"
            else:
                hint = f"; set {key} to one of: {', '.join(self.labels)}" if key else suggest(label, self.labels)
            raise ConfigError(f"dataset {self.name!r} has no label {label!r}{hint}")
        return self.labels[label]

    def shard_urls(self, split: str) -> list[str]:
        """The split's shard paths, brace-expanded; a clear error if they are missing."""
        spec = self.split(split)
        if spec.shards is None:
            raise ConfigError(f"split {split!r} of dataset {self.name!r} has no 'shards' pattern")
        pattern = spec.shards if "://" in spec.shards else str(self.root_dir / spec.shards)
        urls = wds.shardlists.expand_urls(pattern)
        missing = [u for u in urls if "://" not in u and not os.path.exists(u)]
        if missing:
            flags = "".join(f" --{k.replace('_', '-')} {v}" for k, v in self.generator_args.items())
            hint = f"; build it with `python -m multimodal.data.{self.generator} --out {self.root_dir}{flags}`"
            raise FileNotFoundError(
                f"{len(missing)} of {len(urls)} shards of {self.name}/{split} are missing, e.g. {missing[0]}"
                + (hint if self.generator else f"; check root and splits.{split}.shards of {self.source}")
            )
        return urls

    def folder(self, split: str) -> Path:
        spec = self.split(split)
        path = Path(os.path.expanduser(spec.path or split))
        path = path if path.is_absolute() else self.root_dir / path
        if not path.is_dir():
            raise FileNotFoundError(f"image folder {path} for {self.name}/{split} does not exist")
        return path


def data_root() -> Path:
    """Where generated and downloaded datasets live: ``$MULTIMODAL_DATA`` or ``./data``."""
    return Path(os.environ.get("MULTIMODAL_DATA", "data")).expanduser().resolve()


def find_cards_dir() -> Path:
    """The ``datasets/`` folder of cards: ``./datasets`` if present, else the one beside the package."""
    local = Path("datasets")
    return local if local.is_dir() and any(local.glob("*.yaml")) else _REPO_ROOT / "datasets"


def _available() -> list[str]:
    return sorted(p.stem for p in find_cards_dir().glob("*.yaml"))


def load_card(name_or_path: str | Path) -> DatasetCard:
    """A card by name or YAML path, or made on the fly for WebDataset shards (a folder of them, a brace pattern, one
    .tar) or an image folder with class subfolders; which one ``name_or_path`` is, is detected."""
    text = str(name_or_path)
    path = Path(os.path.expanduser(text))
    if path.is_dir():
        return _shards_card(path) if _shard_layout(path) else _folder_card(path)
    if text.endswith(".tar") and "://" not in text:
        return _pattern_card(text)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"dataset card {text!r} does not exist")
    elif os.sep in text or text.startswith("~"):
        raise ConfigError(f"dataset {text!r} does not exist; pass {_ACCEPTED}")
    else:
        path = find_cards_dir() / f"{text}.yaml"
        if not path.is_file():
            hint = suggest(text, _available())
            if not hint.startswith("; did you mean"):
                hint = (
                    f": no card of that name ({', '.join(_available())}) and no such file or folder; pass {_ACCEPTED}"
                )
            raise ConfigError(f"unknown dataset {text!r}{hint}")
    data = load_yaml(path)
    card = DatasetCard.from_dict({**data, "source": str(path)}, prefix=f"{path.name}: ")
    return card


# -- cards made on the fly ------------------------------------------------------------------------------------------
def _shard_layout(path: Path) -> dict[str, list[Path]]:
    """Split name -> its shards: ``path/*.tar`` is split train; else each subfolder holding ``*.tar`` is a split."""
    flat = sorted(path.glob("*.tar"))
    if flat:
        return {"train": flat}
    subfolders = sorted((d for d in path.iterdir() if d.is_dir()), key=_split_order)
    return {d.name: tars for d in subfolders if (tars := sorted(d.glob("*.tar")))}


def _split_order(folder: Path) -> tuple[int, str]:
    known = folder.name in _SPLIT_DIRS
    return (_SPLIT_DIRS.index(folder.name), "") if known else (len(_SPLIT_DIRS), folder.name)


def _shards_card(path: Path) -> DatasetCard:
    """A card for a folder of img2dataset-style shards: ``*.tar`` (split train) or ``<split>/*.tar``; named after the
    folder (after the one above it when the folder itself is called train, val, validation or test)."""
    path = path.resolve()
    layout = _shard_layout(path)
    splits = {
        name: SplitSpec(shards=_brace_pattern(tars, path), num_samples=_num_samples(tars))
        for name, tars in layout.items()
    }
    first = next(iter(layout.values()))[0]
    name = path.parent.name if path.name in _SPLIT_DIRS else path.name  # mywds/train/*.tar is dataset mywds
    return DatasetCard(name=name, root=str(path), image_key=_image_key(first), splits=splits, source=str(path))


def _pattern_card(pattern: str) -> DatasetCard:
    """A card (split train) for a brace pattern of shards, ``/data/mywds/{00000..00009}.tar``, or one ``.tar``."""
    expanded = os.path.expanduser(pattern)
    folder = os.path.dirname(expanded.split("{", 1)[0])
    root = Path(folder or ".").resolve()
    shards = expanded[len(folder) :].lstrip(os.sep)
    urls = [Path(u) for u in wds.shardlists.expand_urls(str(root / shards))]
    missing = [u for u in urls if not u.is_file()]
    if len(urls) == 1 and missing:
        raise FileNotFoundError(f"shard {missing[0]} does not exist; check the path")
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(urls)} shards of {pattern!r} do not exist, e.g. {missing[0]}; "
            "check the folder and the brace range"
        )
    name = root.parent.name if root.name in _SPLIT_DIRS else root.name
    split = SplitSpec(shards=shards, num_samples=_num_samples(urls))
    return DatasetCard(
        name=name or "shards", root=str(root), image_key=_image_key(urls[0]), splits={"train": split}, source=pattern
    )


def _brace_pattern(tars: list[Path], root: Path) -> str:
    """One brace pattern for ``tars`` relative to ``root``: ``train/{00000..00009}.tar`` when the names are a run
    of equally wide numbers, else ``train/{a,b,c}.tar``."""
    prefix = str(tars[0].parent.relative_to(root))
    prefix = "" if prefix == "." else f"{prefix}/"
    stems = [t.stem for t in tars]
    if len(stems) == 1:
        return f"{prefix}{_escape(stems[0])}.tar"
    numbers = [int(s) for s in stems if s.isdigit() and len(s) == len(stems[0])]
    if len(numbers) == len(stems) and numbers == list(range(numbers[0], numbers[0] + len(numbers))):
        return f"{prefix}{{{stems[0]}..{stems[-1]}}}.tar"
    return f"{prefix}{{{','.join(_escape(s) for s in stems)}}}.tar"


def _escape(text: str) -> str:
    return re.sub(r"([{},\\])", r"\\\1", text)


def _num_samples(tars: list[Path]) -> int | None:
    """Samples in ``tars``: from img2dataset's ``NNNNN_stats.json`` when every shard has one (``successes``, else
    ``count``), else counted from the tar headers when there are at most ``COUNT_LIMIT`` shards, else None."""
    counts = [expected_count(str(t)) for t in tars]
    if all(c is not None for c in counts):
        return sum(counts)
    if len(tars) <= COUNT_LIMIT:
        return sum(len(_sample_members(t)) for t in tars)
    return None


def _sample_members(tar: Path) -> list[list[str]]:
    """The member extensions of each sample of a shard, grouped as webdataset groups them (tar headers only)."""
    samples: list[list[str]] = []
    current = None
    try:
        with tarfile.open(tar) as f:
            for member in f:
                match = _MEMBER.match(member.name)
                if not member.isreg() or match is None or _META.match(member.name):
                    continue
                if match.group(1) != current:
                    current = match.group(1)
                    samples.append([])
                samples[-1].append(match.group(2).lower())
    except (OSError, tarfile.TarError):  # unreadable from here on: the stream reports it when it gets there
        pass
    return samples


def _image_key(tar: Path) -> str | None:
    """The image member of the shard's samples (``jpg``); alternatives (``jpg;png``), most common first, when the
    shard mixes several; None if it holds no image."""
    counts = Counter(ext for members in _sample_members(tar) for ext in members if ext in IMAGE_KEYS)
    order = sorted(counts, key=lambda ext: (-counts[ext], IMAGE_KEYS.index(ext)))
    return ";".join(order) or None


def _folder_card(path: Path) -> DatasetCard:
    """A card for ``path/<class>/*.jpg`` or ``path/{train,val,test}/<class>/*.jpg`` (torchvision layout)."""
    path = path.resolve()
    split_dirs = [d for d in _SPLIT_DIRS if (path / d).is_dir()]
    splits = {d: SplitSpec(path=str(path / d)) for d in split_dirs} or {"all": SplitSpec(path=str(path))}
    first = Path(next(iter(splits.values())).path)
    classes = sorted(d.name for d in first.iterdir() if d.is_dir())
    if not classes:
        raise ConfigError(
            f"{first} holds neither WebDataset shards (*.tar, or split subfolders of them) nor class subfolders "
            "(<root>/<class>/<image>); pass a folder in one of these layouts, a brace pattern such as "
            "/data/mywds/{00000..00009}.tar, or a dataset card (see datasets/README.md)"
        )
    names = tuple(c.replace("_", " ") for c in classes)
    return DatasetCard(
        name=path.name, format="folder", root=str(path), splits=splits, labels={"label": names}, source=str(path)
    )


def ensure_dataset(card: DatasetCard, *, progress: bool = False) -> None:
    """Build a generated dataset (``card.generator``) if its files are missing; a no-op otherwise.

    The card's ``generator_args`` are passed to the generator as keyword arguments. Processes that build the same
    dataset at once take turns (a file lock in its directory), so it is rendered once.
    """
    if card.generator is None:
        return
    module = importlib.import_module(f"multimodal.data.{card.generator}")
    build = getattr(module, f"generate_{card.generator}")
    try:
        inspect.signature(build).bind(card.root_dir, progress=progress, **card.generator_args)
    except TypeError as e:
        raise ConfigError(f"dataset {card.name!r}: generator_args do not fit generate_{card.generator}: {e}") from None
    # Two jobs started together (make demo's CLIP and judge) would otherwise render into the same temporary files:
    # the second waits, then finds the dataset complete.
    with exclusive_lock(Path(card.root_dir) / ".build.lock"):
        build(card.root_dir, progress=progress, **card.generator_args)
