"""What the evaluation CLIs share: their parsers' common options, the run they evaluate (its config, dataset and
model, with its preprocessing), where results go (atomic JSON) and one-line errors (``multimodal.cli.run_cli``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from multimodal.cli import HelpFormatter, add_device_argument, add_threads_argument, run_cli
from multimodal.config import ConfigError
from multimodal.data.benchmark import BenchmarkDecoder, load_dataset_card
from multimodal.data.constants import IMAGENET_MEAN, IMAGENET_STD
from multimodal.io import atomic_write_json

if TYPE_CHECKING:  # the rest is imported where it is used: --help and a mistyped option import no torch
    from accelerate import Accelerator
    from torch import nn

    from multimodal.data import DatasetCard, SampleDecoder
    from multimodal.tokenizers.gato import GatoTokenizer

__all__ = [
    "add_common_options",
    "base_parser",
    "cli_parser",
    "load_gato_run",
    "load_run_model",
    "read_run_data",
    "result_path",
    "run_cli",
    "run_decoder",
    "write_result",
]


def cli_parser(
    prog: str, doc: str, checkpoint: str = "run directory or checkpoints/step-* folder"
) -> argparse.ArgumentParser:
    """A CLI's parser, described by the first line of its ``doc``, whose --help shows each option's default; with
    the option every evaluation takes, --checkpoint (``checkpoint``: its help)."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--checkpoint", required=True, help=checkpoint)
    return parser


def add_common_options(
    parser: argparse.ArgumentParser,
    *,
    no_ema: bool = False,
    device: str | None = None,
    out: str | None = None,
) -> None:
    """The options that end a CLI's list, those it takes of them: --no-ema; --device (``device``: its help; ``auto``
    by default, a GPU when there is one); --out, a JSON path (``out``: where results go without it); then
    --threads."""
    if no_ema:
        parser.add_argument("--no-ema", action="store_true", help="use the raw weights even if the run kept an EMA")
    if device is not None:
        add_device_argument(parser, help=device)
    if out is not None:
        parser.add_argument("--out", help=f"JSON path (default: {out})")
    add_threads_argument(parser)


def base_parser(
    prog: str, doc: str, *, split: str, label: str | None = None, every_split: bool = False
) -> argparse.ArgumentParser:
    """:func:`cli_parser` with the options of the CLIs that evaluate a run on a dataset: --dataset, --split
    (``split``: its help; repeatable with ``every_split``, else one, "test" by default), --label (with ``label``:
    its help), --batch-size and --workers (they end with :func:`add_common_options`)."""
    parser = cli_parser(prog, doc)
    parser.add_argument(
        "--dataset",
        help="card name, card path, shards, image folder or CLIP_benchmark folder (wds:DIR) (default: the training "
        "dataset)",
    )
    if every_split:
        parser.add_argument("--split", action="append", help=split)
    else:
        parser.add_argument("--split", default="test", help=split)
    if label is not None:
        parser.add_argument("--label", help=label)
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch and process")
    parser.add_argument("--workers", type=int, default=2, help="data-loader worker processes")
    return parser


def read_run_data(args: argparse.Namespace, task: str) -> tuple[dict[str, Any], DatasetCard]:
    """The data section of the config of run --checkpoint (a run of ``task``) and the card of --dataset (a
    CLIP_benchmark folder too: ``wds:DIR``), else of the dataset the run trained on."""
    from multimodal.runs import read_run_config

    data = read_run_config(args.checkpoint, task=task).get("data", {})
    return data, load_dataset_card(args.dataset or data.get("dataset", "shapes"))


def load_gato_run(args: argparse.Namespace) -> tuple[dict[str, Any], nn.Module, GatoTokenizer]:
    """The config of GATO run --checkpoint, its model on --device (EMA weights where it kept them, unless --no-ema)
    and the tokenizer it trained with."""
    from multimodal import load_checkpoint
    from multimodal.runs import load_gato_tokenizer, read_run_config

    cfg = read_run_config(args.checkpoint, task="gato")
    model = load_checkpoint(args.checkpoint, ema=False if args.no_ema else None, device=args.device)
    return cfg, model, load_gato_tokenizer(args.checkpoint, model)


def add_task_option(parser: argparse.ArgumentParser) -> None:
    """--task: how a GATO with task-routed experts (task MoE, DEMix) picks them."""
    parser.add_argument(
        "--task", choices=("label", "posterior"), default="label",
        help="for task-routed experts: label (each dataset's own task id) or posterior (DEMix: a mixture over tasks "
        "estimated from the context, as for a sequence whose task is not given)",
    )  # fmt: skip


def task_route(model: nn.Module, name: str, how: str) -> int | str | None:
    """What routes ``model``'s experts on dataset ``name`` (:func:`multimodal.pipelines.gato.route`): its task id,
    "posterior", or None for a model without task-routed experts."""
    if how == "posterior":
        if model.cfg.mlp != "demix":
            raise ConfigError(f"--task posterior mixes DEMix experts; this run's model.args.mlp is {model.cfg.mlp!r}")
        return "posterior"
    return model.task_id(name)


def load_run_model(args: argparse.Namespace) -> tuple[nn.Module, Accelerator]:
    """The model of run --checkpoint (its EMA weights where it kept them, unless --no-ema) on the device of an
    ``Accelerator`` (a GPU when there is one), and that accelerator."""
    import torch
    from accelerate import Accelerator

    from multimodal import load_checkpoint

    acc = Accelerator(cpu=not torch.cuda.is_available())
    model = load_checkpoint(args.checkpoint, ema=False if getattr(args, "no_ema", False) else None)
    return model.to(acc.device), acc


def run_decoder(
    data: dict[str, Any],
    *,
    label_key: str | None = None,
    text_key: str | None = None,
    image_key: str | None = None,
    caption_lines: bool = False,
) -> SampleDecoder | BenchmarkDecoder:
    """The evaluation-time decoder of a run: its image size, mean and std (from ``config.yaml``'s data section);
    ``image_key`` is the card's (``card.image_key``). ``label_key="cls"``: the class index is the ``cls`` member
    (image folders, CLIP_benchmark shards, where it is text); ``caption_lines``: the ``txt`` member holds several
    captions, one a line (CLIP_benchmark's retrieval shards), decoded as a list."""
    from multimodal.data import SampleDecoder

    decoder = SampleDecoder(
        image_size=int(data.get("image_size", 224)),
        image_key=image_key,
        label_key=label_key,
        text_key=None if caption_lines else text_key,
        mean=tuple(data.get("mean", IMAGENET_MEAN)),
        std=tuple(data.get("std", IMAGENET_STD)),
    )
    return BenchmarkDecoder(decoder, captions=caption_lines) if label_key == "cls" or caption_lines else decoder


def result_path(args: argparse.Namespace, name: str) -> Path:
    """Where a CLI's results go: --out, else ``eval/<name>`` in the run (or run root) --checkpoint."""
    return Path(args.out) if getattr(args, "out", None) else Path(args.checkpoint) / "eval" / name


def write_result(
    args: argparse.Namespace,
    name: str,
    result: dict[str, Any],
    *,
    table: str | None = None,
    acc: Accelerator | None = None,
) -> None:
    """Print ``table`` (when given), write ``result`` as JSON to :func:`result_path` through a temporary file and a
    rename, then say where; only the main process of ``acc`` does."""
    if acc is not None and not acc.is_main_process:
        return
    if table is not None:
        print(table)
    path = result_path(args, name)
    atomic_write_json(path, result, indent=2)
    print(f"wrote {path}")
