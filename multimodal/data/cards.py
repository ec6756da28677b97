"""Dataset cards: one YAML per dataset saying where its data lives, its splits, classes and prompt templates.

A card is found by name (``shapes`` -> ``datasets/shapes.yaml``), by path to a YAML file, or made on the fly
for an image folder with class subfolders. Relative ``root`` paths resolve against the data root:
``$MULTIMODAL_DATA`` if set, else ``./data``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
from pathlib import Path
from typing import Any, Literal

import webdataset as wds

from ..config import Config, ConfigError, suggest

__all__ = ["DatasetCard", "SplitSpec", "data_root", "ensure_dataset", "find_cards_dir", "load_card"]

_REPO_ROOT = Path(__file__).resolve().parents[2]


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
    image_key: str = "png"
    text_key: str = "txt"
    captions_key: str | None = None  # a list field of the sample .json: alternative captions of the image
    splits: dict[str, SplitSpec] = dataclasses.field(default_factory=dict)
    labels: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    templates: tuple[str, ...] = ("a photo of a {}.",)
    heldout_combos: tuple[tuple[str, ...], ...] | None = None
    source: str = ""  # the card file, filled in by load_card

    @property
    def root_dir(self) -> Path:
        root = Path(os.path.expanduser(self.root))
        return root if root.is_absolute() else data_root() / root

    def split(self, name: str) -> SplitSpec:
        if name not in self.splits:
            raise ConfigError(f"dataset {self.name!r} has no split {name!r}{suggest(name, self.splits)}")
        return self.splits[name]

    def class_names(self, label: str) -> tuple[str, ...]:
        if label not in self.labels:
            raise ConfigError(f"dataset {self.name!r} has no label {label!r}{suggest(label, self.labels)}")
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
                + (hint if self.generator else "")
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
    """A card by name, by path to a YAML card, or for an image folder (class subfolders, optional split dirs)."""
    text = str(name_or_path)
    path = Path(os.path.expanduser(text))
    if path.is_dir():
        return _folder_card(path)
    if path.suffix in (".yaml", ".yml") or os.sep in text:
        if not path.is_file():
            raise ConfigError(f"dataset card {text!r} does not exist")
    else:
        path = find_cards_dir() / f"{text}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown dataset {text!r}{suggest(text, _available())}")
    from ..config import load_yaml

    data = load_yaml(path)
    card = DatasetCard.from_dict({**data, "source": str(path)}, prefix=f"{path.name}: ")
    return card


def _folder_card(path: Path) -> DatasetCard:
    """A card for ``path/<class>/*.jpg`` or ``path/{train,val,test}/<class>/*.jpg`` (torchvision layout)."""
    path = path.resolve()
    split_dirs = [d for d in ("train", "val", "validation", "test") if (path / d).is_dir()]
    splits = {d: SplitSpec(path=str(path / d)) for d in split_dirs} or {"all": SplitSpec(path=str(path))}
    first = Path(next(iter(splits.values())).path)
    classes = sorted(d.name for d in first.iterdir() if d.is_dir())
    if not classes:
        raise ConfigError(f"{first} has no class subfolders; an image folder dataset needs <root>/<class>/<image>")
    names = tuple(c.replace("_", " ") for c in classes)
    return DatasetCard(
        name=path.name, format="folder", root=str(path), splits=splits, labels={"label": names}, source=str(path)
    )


def ensure_dataset(card: DatasetCard, *, progress: bool = False) -> None:
    """Build a generated dataset (``card.generator``) if its files are missing; a no-op otherwise.

    The card's ``generator_args`` are passed to the generator as keyword arguments.
    """
    if card.generator is None:
        return
    module = importlib.import_module(f"multimodal.data.{card.generator}")
    build = getattr(module, f"generate_{card.generator}")
    try:
        inspect.signature(build).bind(card.root_dir, progress=progress, **card.generator_args)
    except TypeError as e:
        raise ConfigError(f"dataset {card.name!r}: generator_args do not fit generate_{card.generator}: {e}") from None
    build(card.root_dir, progress=progress, **card.generator_args)
