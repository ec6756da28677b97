"""Export a trained run to the folder open_clip, timm or diffusers reads:

    python -m multimodal.export --checkpoint runs/clip-shapes --to open_clip --out clip-shapes-open_clip
    python -m multimodal.export --checkpoint runs/vit-shapes --to timm --out vit-shapes-timm
    python -m multimodal.export --checkpoint runs/unclip-shapes --to diffusers --out unclip-shapes-pipeline

- open_clip (a CLIP run whose image tower is this suite's ViT with the patchify stem, e.g. trained with
  ``model.args.vision.stem=patch``): ``open_clip_config.json`` (``model_cfg``, ``preprocess_cfg``) and
  ``open_clip_model.safetensors``, for ``open_clip.create_model_and_transforms("local-dir:DIR")`` and
  ``open_clip.get_tokenizer("local-dir:DIR")``.
- timm (a ViT classifier run with the patchify stem, e.g. ``model.name=vit_nano_patch4_32``): ``config.json``
  (``architecture``, ``num_classes``, ``model_args``, ``pretrained_cfg`` with the run's preprocessing and label
  names) and ``model.safetensors``, for ``timm.create_model("local-dir:DIR", pretrained=True)``, or by name:
  ``timm.create_model(cfg["architecture"], pretrained=True, pretrained_cfg_overlay={"file": "DIR/model.safetensors",
  "num_classes": cfg["num_classes"]}, **cfg["model_args"])`` (without ``num_classes`` there, timm drops a head
  whose size differs from the named model's 1000 classes).
- diffusers (an unCLIP run root holding prior/ and decoder/ runs, or a saved pipeline): the pipeline's
  ``save_pretrained`` folder, for ``UnclipPipeline.from_pretrained(DIR)``.

What the target cannot express (an AA-ResNet, STN or timm image tower, a conv stem, attention pooling, ...) is
refused before anything is written. The folder is written beside ``--out`` under a temporary name and renamed into
place when complete, so a failure or a kill never leaves a half-written export; an existing non-empty ``--out`` is
refused unless ``--force``, which replaces it.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cli import HelpFormatter, run_cli
from .io import atomic_dir

__all__ = ["TARGETS", "export", "export_diffusers", "export_open_clip", "export_timm", "main"]

OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS = "open_clip_config.json", "open_clip_model.safetensors"
TIMM_CONFIG, TIMM_WEIGHTS = "config.json", "model.safetensors"
# --to -> what it takes, and how the written folder loads
TARGETS = {
    "open_clip": ("a CLIP run", 'open_clip.create_model_and_transforms("local-dir:{}")'),
    "timm": ("a ViT classifier run", 'timm.create_model("local-dir:{}", pretrained=True)'),
    "diffusers": ("an unCLIP run root or saved pipeline", 'UnclipPipeline.from_pretrained("{}")'),
}
_TARGET_OF_TASK = {"clip": "open_clip", "classification": "timm"}
_WANTED = (
    "a CLIP or ViT classifier run directory (or one of its checkpoints/step-* folders), an unCLIP run root (the "
    "folder holding prior/ and decoder/ runs) or a saved unCLIP pipeline (model_index.json)"
)
# timm's standard ViTs -> (patch_size, embed_dim, depth, num_heads); an export names the one most alike, and its
# model_args override every one of these
_TIMM_VITS = {
    "vit_tiny_patch16_224": (16, 192, 12, 3),
    "vit_small_patch16_224": (16, 384, 12, 6),
    "vit_small_patch32_224": (32, 384, 12, 6),
    "vit_base_patch16_224": (16, 768, 12, 12),
    "vit_base_patch32_224": (32, 768, 12, 12),
    "vit_large_patch16_224": (16, 1024, 24, 16),
    "vit_large_patch32_224": (32, 1024, 24, 16),
    "vit_huge_patch14_224": (14, 1280, 32, 16),
}


def export_open_clip(checkpoint: str | Path, out: str | Path, *, force: bool = False, ema: bool | None = None) -> Path:
    """Write the CLIP of run ``checkpoint`` as the folder open_clip loads with ``local-dir:``; returns ``out``.

    ``ema`` as in :func:`multimodal.load_checkpoint` (None: the EMA weights when the run kept them).
    """
    checkpoint, out = Path(checkpoint), Path(out)
    _check_target(checkpoint, "open_clip")
    _check_out(out, force=force, checkpoint=checkpoint)
    from .runs import load_checkpoint, read_run_config, run_transform

    model = load_checkpoint(checkpoint, ema=ema)
    try:
        model_cfg = model.to_open_clip_config()
    except ValueError as e:
        raise ValueError(f"{checkpoint} cannot be exported to open_clip: {e}") from None
    state = model.to_open_clip_state_dict()
    transform = run_transform(read_run_config(checkpoint), where=checkpoint)
    if transform.image_size != model.cfg.vision.img_size:
        raise ValueError(
            f"{checkpoint} preprocesses {transform.image_size} px images (data.image_size) but its image tower takes "
            f"{model.cfg.vision.img_size} px; open_clip preprocesses to the tower's size, so they must agree"
        )
    _check_loads("open_clip", lambda: _open_clip_model(model_cfg), state)
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {  # open_clip's eval transform equal to ours: shorter side, bicubic, centre crop
            "size": transform.image_size,
            "mode": "RGB",
            "mean": list(transform.mean),
            "std": list(transform.std),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
            "fill_color": 0,
        },
    }
    return _publish(out, lambda folder: _write(folder, OPEN_CLIP_CONFIG, config, OPEN_CLIP_WEIGHTS, state))


def export_timm(checkpoint: str | Path, out: str | Path, *, force: bool = False, ema: bool | None = None) -> Path:
    """Write the ViT classifier of run ``checkpoint`` in timm's layout (``config.json`` + ``model.safetensors``),
    loadable with ``timm.create_model("local-dir:DIR", pretrained=True)``; returns ``out``.

    The label names come from the run's dataset card when it can be read (``data.dataset``, ``data.label``).
    """
    checkpoint, out = Path(checkpoint), Path(out)
    _check_target(checkpoint, "timm")
    _check_out(out, force=force, checkpoint=checkpoint)
    from .models.vit import VisionTransformer
    from .runs import load_checkpoint, read_run_config, run_transform

    cfg = read_run_config(checkpoint)
    model = load_checkpoint(checkpoint, ema=ema)
    if not isinstance(model, VisionTransformer):
        raise ValueError(
            f"{checkpoint} holds a {type(model).__name__} (model {cfg['model']['name']}); only ViT classifiers "
            "(multimodal.models.vit) export to timm"
        )
    try:
        model_args = model.to_timm_model_args()
    except ValueError as e:
        raise ValueError(f"{checkpoint} cannot be exported to timm: {e}") from None
    state = model.to_timm_state_dict()
    architecture = _timm_architecture(model_args)
    _check_loads("timm", lambda: _timm_model(architecture, model_args), state)
    transform = run_transform(cfg, where=checkpoint)
    if transform.image_size != model.cfg.img_size:
        raise ValueError(
            f"{checkpoint} preprocesses {transform.image_size} px images (data.image_size) but the ViT takes "
            f"{model.cfg.img_size} px; they must agree"
        )
    pretrained_cfg: dict[str, Any] = {
        "input_size": [model.cfg.in_chans, transform.image_size, transform.image_size],
        "fixed_input_size": True,
        "interpolation": "bicubic",
        "crop_pct": 1.0,  # shorter side to the input size, then the centre square: our evaluation transform
        "crop_mode": "center",
        "mean": list(transform.mean),
        "std": list(transform.std),
        "num_classes": model.cfg.num_classes,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
    }
    labels = _label_names(cfg, model.cfg.num_classes, checkpoint)
    if labels is not None:
        pretrained_cfg["label_names"] = labels
    config = {
        "architecture": architecture,
        "num_classes": model.cfg.num_classes,
        "num_features": model.cfg.dim,
        "global_pool": model_args["global_pool"],
        "model_args": model_args,
        "pretrained_cfg": pretrained_cfg,
    }
    return _publish(out, lambda folder: _write(folder, TIMM_CONFIG, config, TIMM_WEIGHTS, state))


def export_diffusers(checkpoint: str | Path, out: str | Path, *, force: bool = False) -> Path:
    """Write the unCLIP pipeline of ``checkpoint`` (an unCLIP run root, or a saved pipeline) with its
    ``save_pretrained``, loadable with ``UnclipPipeline.from_pretrained(out)``; returns ``out``."""
    checkpoint, out = Path(checkpoint), Path(out)
    _check_target(checkpoint, "diffusers")
    _check_out(out, force=force, checkpoint=checkpoint)
    from .pipelines.unclip import UnclipPipeline
    from .runs import load_unclip_pipeline

    if (checkpoint / "model_index.json").is_file():
        pipe = UnclipPipeline.from_pretrained(str(checkpoint))
    else:
        pipe = load_unclip_pipeline(checkpoint)
    return _publish(out, pipe.save_pretrained)


def export(checkpoint: str | Path, to: str, out: str | Path, *, force: bool = False, ema: bool | None = None) -> Path:
    """:func:`export_open_clip`, :func:`export_timm` or :func:`export_diffusers`, as ``to`` names."""
    if to not in TARGETS:
        raise ValueError(f"unknown export target {to!r}; choose one of {', '.join(TARGETS)}")
    if to == "diffusers":
        if ema is not None:
            raise ValueError("--no-ema (ema=) applies to open_clip and timm exports; an unCLIP stack uses EMA weights")
        return export_diffusers(checkpoint, out, force=force)
    exporter = export_open_clip if to == "open_clip" else export_timm
    return exporter(checkpoint, out, force=force, ema=ema)


# -- what a checkpoint is, and where it may go ------------------------------------------------------------------------
def _target_of(checkpoint: Path) -> tuple[str | None, str, str]:
    """The --to that takes ``checkpoint`` (None: none does), what it is in words, and a hint for the user."""
    if not checkpoint.exists():
        raise FileNotFoundError(f"checkpoint {str(checkpoint)!r} does not exist; pass {_WANTED}")
    if (checkpoint / "model_index.json").is_file():
        return "diffusers", "a saved unCLIP pipeline", ""
    is_run = any((p / "config.yaml").is_file() for p in (checkpoint, checkpoint.parent.parent))
    if not is_run and any((checkpoint / stage / "config.yaml").is_file() for stage in ("prior", "decoder")):
        return "diffusers", "an unCLIP run root", ""
    if not is_run:
        raise FileNotFoundError(f"{checkpoint} has no config.yaml, prior/ or model_index.json; pass {_WANTED}")
    from .runs import describe_run, read_run_config

    cfg = read_run_config(checkpoint)
    task = (cfg.get("task") or {}).get("name", "classification")
    hint = ""
    if task.startswith("unclip_"):
        hint = "; export the unCLIP run root above it (the folder holding prior/ and decoder/) with --to diffusers"
    return _TARGET_OF_TASK.get(task), describe_run(cfg), hint


def _check_target(checkpoint: Path, to: str) -> None:
    """A one-line error unless ``checkpoint`` is what ``--to to`` exports, naming the --to that fits it."""
    fits, what, hint = _target_of(checkpoint)
    if fits == to:
        return
    takes = ", ".join(f"{name} takes {TARGETS[name][0]}" for name in TARGETS)
    fix = f"; it exports with --to {fits}" if fits else (hint or f"; nothing exports it ({takes})")
    raise ValueError(f"{checkpoint} is {what}, not {TARGETS[to][0]} that --to {to} takes{fix}")


def _check_out(out: Path, *, force: bool, checkpoint: Path) -> None:
    """Refuse an ``out`` that is a file, holds the checkpoint, or (without ``force``) is a non-empty folder."""
    if out.name in ("", ".", ".."):
        raise ValueError(f"--out {str(out)!r} names no new folder; give one, e.g. --out exported")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; give the folder to write the export into")
    source, target = checkpoint.resolve(), out.resolve()
    if target == source or target in source.parents:
        raise ValueError(f"--out {out} holds the checkpoint {checkpoint}; choose a folder outside it")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(
            f"--out {out} exists and is not empty; pass --force (force=True) to replace it or choose a new folder "
            "(nothing was written)"
        )


# -- building and writing -----------------------------------------------------------------------------------------
def _timm_architecture(model_args: dict[str, Any]) -> str:
    """The timm ViT name most alike ``model_args`` (the most of patch size, width, depth and heads in common)."""
    ours = tuple(model_args[k] for k in ("patch_size", "embed_dim", "depth", "num_heads"))
    return max(_TIMM_VITS, key=lambda name: sum(a == b for a, b in zip(_TIMM_VITS[name], ours, strict=True)))


def _open_clip_model(model_cfg: dict[str, Any]) -> Any:
    import open_clip

    return open_clip.model.CLIP(**model_cfg)


def _timm_model(architecture: str, model_args: dict[str, Any]) -> Any:
    import timm

    return timm.create_model(architecture, pretrained=False, **model_args)


def _check_loads(target: str, build: Callable[[], Any], state: dict[str, Any]) -> None:
    """Build the target library's model with ``build`` (on the meta device: no memory) and load ``state`` into it
    strictly: an export that would not load is refused before anything is written."""
    import torch

    with torch.device("meta"):
        model = build()
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise ValueError(f"the weights do not load into the {target} model its config builds: {e}") from None


def _label_names(cfg: dict[str, Any], num_classes: int, checkpoint: Path) -> list[str] | None:
    """The class names of the run's ``data.label`` on its dataset card; None, with a warning, where there are none."""
    from .data.cards import load_card

    data = cfg.get("data") or {}
    label, dataset = data.get("label"), data.get("dataset")
    if not label or not dataset:
        return None
    try:
        names = load_card(dataset).class_names(label)
    except (ValueError, OSError) as e:
        warnings.warn(f"{checkpoint}: the export has no label names ({e})", stacklevel=2)
        return None
    if len(names) != num_classes:
        warnings.warn(
            f"{checkpoint}: the export has no label names: {dataset}:{label} has {len(names)} classes, the model "
            f"{num_classes}",
            stacklevel=2,
        )
        return None
    return list(names)


def _write(folder: Path, config_name: str, config: dict[str, Any], weights_name: str, state: dict[str, Any]) -> None:
    """``config`` as JSON and ``state`` as safetensors into ``folder``."""
    from .io import atomic_save_safetensors, atomic_write_json

    atomic_write_json(folder / config_name, config)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    atomic_save_safetensors(tensors, folder / weights_name, metadata={"format": "pt"})


def _publish(out: Path, fill: Callable[[Path], Any]) -> Path:
    """Have ``fill`` write the folder ``out`` as a whole (:func:`~multimodal.io.atomic_dir`): the old folder or the
    complete new one, never half of one."""
    with atomic_dir(out) as tmp:
        fill(tmp)
    return out


# -- command line -------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> None:
    """Export --checkpoint to --to at --out and say how to load it."""
    out = export(args.checkpoint, args.to, args.out_dir, force=args.force, ema=False if args.no_ema else None)
    print(f"wrote {out}; load it with {TARGETS[args.to][1].format(out)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m multimodal.export",
        description=__doc__.splitlines()[0].rstrip(":"),
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--checkpoint", required=True, help="CLIP or ViT classifier run, unCLIP run root, or saved unCLIP pipeline"
    )
    parser.add_argument(
        "--to",
        required=True,
        choices=list(TARGETS),
        help="open_clip (a CLIP run), timm (a ViT classifier run) or diffusers (an unCLIP stack)",
    )
    parser.add_argument("--out", dest="out_dir", required=True, metavar="DIR", help="the folder to write")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists and is not empty")
    parser.add_argument("--no-ema", action="store_true", help="export the raw weights even if the run kept an EMA")
    return run_cli(run, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
