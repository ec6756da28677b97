"""Open run directories (or their checkpoints): trained models with weights from safetensors only, the unCLIP
pipeline of a stack of runs, and the CLIP embeddings a CLIP run caches. The one module of the library that reads a
run's folder; what is below it (models, data, pipelines) takes models."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import ConfigError, load_yaml
from .data.cards import DatasetCard
from .data.embeddings import ClipEmbeddings, compute_clip_embeddings, load_cache, save_cache, weights_fingerprint
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, ImageTransform
from .io import atomic_dir, exclusive_lock
from .models.clip import CLIP
from .models.registry import create_model
from .pipelines.unclip import ClipEncoder, UnclipPipeline
from .tokenizers import ClipTokenizer
from .tokenizers.gato import TOKENIZER_FILE, GatoTokenizer

__all__ = [
    "cached_clip_embeddings",
    "describe_run",
    "get_tokenizer",
    "load_checkpoint",
    "load_gato_tokenizer",
    "load_model_and_transforms",
    "load_unclip_pipeline",
    "read_run_config",
    "run_dir",
    "run_transform",
    "run_weights",
    "write_run",
]

_STACK = "multimodal.generate, given the folder above it"
# task.name of a run -> what the run is, the recipes that train one, and what takes it
_RUN_KINDS = {
    "classification": ("an image-classifier run", "configs/vit/*.yaml, configs/vision/*.yaml", "eval.classify"),
    "clip": ("a CLIP run", "configs/clip/*.yaml", "eval.zeroshot or eval.retrieval"),
    "unclip_prior": ("an unCLIP prior run", "configs/unclip/*-prior.yaml", _STACK),
    "unclip_decoder": ("an unCLIP decoder run", "configs/unclip/*-decoder.yaml", _STACK),
    "unclip_upsampler": ("an unCLIP upsampler run", "configs/unclip/*-upsampler.yaml", _STACK),
    "gato": ("a GATO run", "configs/gato/*.yaml", "eval.control or eval.caption"),
}
# task.name of a run that takes images -> the (mean, std) it normalises them with; None: the run's data.mean, data.std
_IMAGE_NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "classification": None,
    "clip": None,
    "gato": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # pixels stay in [0, 1]: GATO's tokenizer normalises patches itself
}


def run_dir(path: Path) -> Path:
    """The run directory holding ``config.yaml``: ``path`` itself or the run above a checkpoint folder."""
    for candidate in (path, path.parent.parent):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise ConfigError(
        f"{path} is not a run directory: it has no config.yaml; pass the folder a training run wrote "
        "(e.g. runs/vit-shapes) or one of its checkpoints/step-* folders"
    )


def read_run_config(path: str | Path, *, task: str | tuple[str, ...] | None = None) -> dict[str, Any]:
    """The resolved recipe a run was trained with, as a plain dict; with ``task``, only of a run of that task (or
    of one of those tasks): a run of another family is a ConfigError that says what it is and what takes it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist; pass a run directory, e.g. runs/vit-shapes")
    cfg = load_yaml(run_dir(path) / "config.yaml")
    tasks = (task,) if isinstance(task, str) else task
    if tasks is not None and _task(cfg) not in tasks:
        wanted = " or ".join(_RUN_KINDS[t][0] for t in tasks)
        recipes = ", ".join(_RUN_KINDS[t][1] for t in tasks)
        raise ConfigError(f"{path} is {describe_run(cfg)}, not {wanted}: pass a run of {recipes}")
    return cfg


def describe_run(cfg: dict[str, Any]) -> str:
    """What a run is and what takes it, from its config: "an image-classifier run (model vit_x; for eval.classify)"."""
    task = _task(cfg)
    kind, _, use = _RUN_KINDS.get(task, (f"a {task!r} run", "", "no tool of this version"))
    return f"{kind} (model {(cfg.get('model') or {}).get('name')}; for {use})"


def _task(cfg: dict[str, Any]) -> str:
    return (cfg.get("task") or {}).get("name", "classification")  # TaskConfig's default


def run_weights(path: str | Path, *, ema: bool | None = None) -> Path:
    """The weights file ``load_checkpoint`` reads: ``model_ema.safetensors`` when ``ema`` (or ``ema=None`` and the run
    kept EMA weights), else ``model.safetensors``, of a run directory or a ``checkpoints/step-*`` folder."""
    path = Path(path)
    folder = path if (path / "model.safetensors").is_file() else run_dir(path)
    weights = folder / "model.safetensors"
    ema_weights = folder / "model_ema.safetensors"
    if ema or (ema is None and ema_weights.is_file()):
        if not ema_weights.is_file():
            raise ConfigError(f"{folder} has no EMA weights (model_ema.safetensors); load with ema=False")
        weights = ema_weights
    if not weights.is_file():
        raise ConfigError(f"{folder} has no model.safetensors yet: the run has not saved a checkpoint")
    return weights


def load_checkpoint(path: str | Path, *, ema: bool | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """A ready model (eval mode) from a run directory or a ``checkpoints/step-*`` folder.

    With ``ema=None`` the EMA weights are used when the run kept them.
    """
    path = Path(path)
    cfg = read_run_config(path)
    model_cfg = cfg.get("model") or {}
    if "name" not in model_cfg:
        raise ConfigError(f"{run_dir(path) / 'config.yaml'} names no model (model.name)")
    weights = run_weights(path, ema=ema)
    with torch.random.fork_rng(devices=[]):  # the random initialisation, overwritten next, leaves the caller's RNG
        model = create_model(model_cfg["name"], **(model_cfg.get("args") or {}))
    device = torch.device(device)
    try:  # safetensors names the CPU "cpu" only, while a process of a multi-CPU launch computes on "cpu:0"
        state = load_file(str(weights), device="cpu" if device.type == "cpu" else str(device))
    except SafetensorError as e:
        raise ConfigError(f"{weights} is not a readable safetensors file ({e}): the checkpoint is damaged") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"{weights} does not match model {model_cfg['name']!r}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return model.to(device).eval()


def write_run(out: str | Path, config: dict[str, Any], model: nn.Module, *, files: Sequence[Path] = ()) -> Path:
    """A run folder that every tool reads as a trained run: ``config.yaml``, ``model.safetensors`` (the model's
    state, contiguous) and ``files`` copied in. Written in a temporary folder beside ``out`` and renamed, so a failure
    leaves no half-written run; an existing ``out`` is refused."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new --out folder (nothing was written)")
    with atomic_dir(out) as tmp:
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors")
        )
        for file in files:
            shutil.copy2(file, tmp / Path(file).name)
    return out


def load_model_and_transforms(
    path: str | Path, *, ema: bool | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ImageTransform]:
    """The model of a run (eval mode, as :func:`load_checkpoint`) and the preprocessing its images get at evaluation,
    as open_clip's ``create_model_from_pretrained``::

        model, preprocess = multimodal.load_model_and_transforms("runs/clip-shapes")
        features = model.encode_image(preprocess(Image.open("cat.png")).unsqueeze(0))

    For image-classifier, CLIP and GATO runs; a run that takes no images (unCLIP) is a ValueError.
    """
    transform = run_transform(read_run_config(path), where=Path(path))
    return load_checkpoint(path, ema=ema, device=device), transform


def run_transform(cfg: dict[str, Any], *, where: Path | str = "the run") -> ImageTransform:
    """The evaluation-time :class:`ImageTransform` of a run, from its config (:func:`read_run_config`): the run's
    ``data.image_size`` and normalisation, as :class:`~multimodal.data.SampleDecoder` applies them."""
    task = _task(cfg)
    if task not in _IMAGE_NORMALISATION:
        raise ConfigError(
            f"{where} is {describe_run(cfg)}, which takes no images to preprocess; image transforms come with "
            "image-classifier, CLIP and GATO runs (load this one with multimodal.load_checkpoint)"
        )
    data = cfg.get("data") or {}
    mean, std = _IMAGE_NORMALISATION[task] or (data.get("mean", IMAGENET_MEAN), data.get("std", IMAGENET_STD))
    return ImageTransform(image_size=int(data.get("image_size", 224)), mean=tuple(mean), std=tuple(std))


def get_tokenizer(model: nn.Module) -> ClipTokenizer:
    """The text tokenizer of a CLIP model (its context length), as open_clip's ``get_tokenizer``."""
    if not isinstance(model, CLIP):
        raise ValueError(
            f"get_tokenizer takes a CLIP model (multimodal.load_checkpoint of a CLIP run), got {type(model).__name__}"
        )
    return ClipTokenizer(context_length=model.cfg.text.context_length)


def load_gato_tokenizer(path: str | Path, model: nn.Module) -> GatoTokenizer:
    """The tokenizer a GATO run trained with (its ``gato_tokenizer.json``; open_clip's whole BPE for a run that saved
    none), checked against the model's vocabulary layout."""
    tokenizer_file = run_dir(Path(path)) / TOKENIZER_FILE
    tokenizer = GatoTokenizer.load(tokenizer_file) if tokenizer_file.is_file() else GatoTokenizer()
    tokenizer.check_model(model.cfg)
    return tokenizer


def load_unclip_pipeline(
    root: str | Path | None = None,
    *,
    prior: str | Path | None = None,
    decoder: str | Path | None = None,
    upsampler: str | Path | None = None,
    clip: str | Path | None = None,
    sampler: str = "dpmsolver++",
) -> UnclipPipeline:
    """An :class:`UnclipPipeline` assembled from training runs: ``root`` holding ``prior/``, ``decoder/`` and
    (optionally) ``upsampler/`` run directories, or each given on its own; the CLIP is the prior's ``task.clip``
    unless ``clip`` names a CLIP run. EMA weights are used where a run kept them; ``sampler`` as in
    :meth:`UnclipPipeline.from_components`."""
    root = Path(root) if root is not None else None
    paths = {"prior": prior, "decoder": decoder, "upsampler": upsampler}
    for name in paths:
        if paths[name] is None and root is not None and (root / name / "config.yaml").is_file():
            paths[name] = root / name
    for name in ("prior", "decoder"):
        if paths[name] is None:
            where = f"{root}/{name}" if root is not None else f"{name}="
            raise ValueError(f"no {name} run: train configs/unclip/*-{name}.yaml first (looked for {where})")
    configs = {k: read_run_config(p, task=f"unclip_{k}") for k, p in paths.items() if p is not None}
    clip = clip or configs["prior"].get("task", {}).get("clip")
    if clip is None:
        raise ValueError(f"the prior run {paths['prior']} names no CLIP run (task.clip); pass clip=")
    clip_cfg = read_run_config(clip, task="clip")
    encoder = ClipEncoder(
        model=clip_cfg["model"]["name"],
        model_args=clip_cfg["model"].get("args") or {},
        mean=tuple(clip_cfg["data"]["mean"]),
        std=tuple(clip_cfg["data"]["std"]),
    )
    encoder.clip.load_state_dict(load_checkpoint(clip).state_dict())
    encoder.eval()  # as load_checkpoint leaves the stages, and as from_pretrained leaves every component
    models = {k: load_checkpoint(p) if p is not None else None for k, p in paths.items()}
    return UnclipPipeline.from_components(
        encoder, models["prior"], models["decoder"], models["upsampler"], sampler=sampler
    )


def cached_clip_embeddings(
    clip_run: str | Path, card: DatasetCard, split: str, *, progress: bool = False
) -> ClipEmbeddings:
    """The embeddings of ``split`` by the CLIP of run ``clip_run`` (EMA weights when the run kept them, as
    :func:`load_checkpoint` picks), computed on first use and cached in the run at
    ``<clip_run>/embeddings/<dataset>-<split>.safetensors``; weights that changed since invalidate the cache."""
    clip_run = Path(clip_run)
    fingerprint = weights_fingerprint(run_weights(clip_run))
    path = clip_run / "embeddings" / f"{card.name}-{split}.safetensors"
    with exclusive_lock(path.with_name(f".{path.name}.lock")):  # a prior and a decoder started together: one builds
        cached = load_cache(path, fingerprint)
        if cached is not None:
            return cached
        clip = load_checkpoint(clip_run)
        data = read_run_config(clip_run).get("data", {})
        result = compute_clip_embeddings(
            clip,
            card,
            split,
            image_size=int(data.get("image_size", clip.cfg.vision.img_size)),
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
            tokenizer=ClipTokenizer(context_length=clip.cfg.text.context_length),
            progress=progress,
        )
        save_cache(result, path, fingerprint=fingerprint, dataset=card.name, split=split)
        return result
