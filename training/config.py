"""The training recipe: a frozen, typed tree read from ``configs/<family>/<recipe>.yaml``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import torch

from multimodal.config import Config, ConfigError, apply_overrides, load_yaml
from multimodal.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["DataConfig", "ModelSpec", "OptimConfig", "RunConfig", "TaskConfig", "TrainConfig", "TrainLoopConfig"]


@dataclasses.dataclass(frozen=True)
class RunConfig(Config):
    name: str = "run"
    out_dir: str | None = None  # default: runs/<name>
    seed: int = 0
    overwrite: bool = False  # allow starting afresh in a run directory that holds a run


@dataclasses.dataclass(frozen=True)
class TaskConfig(Config):
    name: Literal["classification", "clip", "unclip_prior", "unclip_decoder", "unclip_upsampler", "gato"] = (
        "classification"
    )
    label_smoothing: float = 0.0  # classification
    aux_loss_weight: float = 0.01  # mixture-of-experts load balancing (Switch Transformer's alpha)
    loss: Literal["clip", "siglip"] = "clip"  # clip: contrastive loss of the image and text towers
    grad_cache_chunks: int = 1  # clip: exact gradient of a batch computed in this many chunks (GradCache)
    zeroshot_splits: tuple[str, ...] = ()  # clip: splits to zero-shot classify (default: data.eval_split)
    clip: str | None = None  # unclip_prior / unclip_decoder: the frozen CLIP's run directory
    eval_samples: int = 64  # unclip_*: evaluation samples drawn at each evaluation; gato: images captioned
    guidance_scale: float = 3.0  # unclip_prior / unclip_decoder: classifier-free guidance of evaluation samples
    sample_steps: int = 25  # unclip_*: DPM-Solver++ steps of evaluation samples
    mixture: dict[str, float] = dataclasses.field(default_factory=dict)  # gato: dataset card -> share of a batch
    prompt_prob: float = 0.25  # gato: share of control sequences prefixed with a demonstration of the same task
    eval_episodes: int = 5  # gato: rollouts per control dataset at each evaluation
    text_vocabulary: Literal["bpe", "captions"] = "bpe"  # gato: open_clip's BPE, or only the captions' tokens


@dataclasses.dataclass(frozen=True)
class ModelSpec(Config):
    """A registered model (``multimodal.list_models()``) and overrides of its preset config."""

    name: str = "vit_nano_patch4_32"
    args: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DataConfig(Config):
    dataset: str = "shapes"  # card name, card path, or image folder
    train_split: str = "train"
    eval_split: str | None = "test"
    label: str | None = None  # label key of the card; default: its first
    image_size: int = 224
    batch_size: int = 64  # per process
    eval_batch_size: int = 256
    num_workers: int = 2
    shuffle_buffer: int = 2000
    resampled: bool = False
    augment: Literal["none", "flip", "crop_flip"] = "none"
    # CLIP captions. fixed: the card's text_key member; random: one of the card's captions_key list, per epoch.
    caption_sampling: Literal["fixed", "random"] = "fixed"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclasses.dataclass(frozen=True)
class OptimConfig(Config):
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    accum: int = 1
    fused: bool = True  # PyTorch's fused AdamW kernel (CPU, CUDA); false: its per-tensor loop


@dataclasses.dataclass(frozen=True)
class TrainLoopConfig(Config):
    steps: int = 1000  # optimizer steps
    precision: Literal["no", "bf16", "fp16"] = "no"
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate at the end only
    checkpoint_every: int = 0  # 0: checkpoint at the end only
    keep_checkpoints: int = 2
    ema_decay: float = 0.0  # 0: no EMA
    ema_warmup: bool = True  # decay of update n: min(ema_decay, (1 + n) / (10 + n))
    log_with: tuple[str, ...] = ("tensorboard",)
    progress: bool = True
    cpu: bool = False  # force the CPU even when an accelerator is present
    stop_at: int | None = None  # end this invocation at this step (checkpointed), schedule unchanged: resume later
    record_keys: bool = False  # write each rank's training sample keys to keys/rank-N.txt (data audits)
    max_bad_steps: int = 5  # a step with a non-finite loss or gradient is skipped; this many in a row stop the run
    threads: int = 0  # CPU threads per process; 0 (auto): OMP_NUM_THREADS if set, else the cores other jobs leave idle


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    model: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainLoopConfig = dataclasses.field(default_factory=TrainLoopConfig)
    resume: str | None = None  # "latest" (the newest complete checkpoint of the run) or a checkpoint folder

    def __post_init__(self) -> None:
        checks = [
            (self.train.steps >= 1, "train.steps must be >= 1"),
            (self.data.batch_size >= 1, "data.batch_size must be >= 1"),
            (self.data.num_workers >= 0, "data.num_workers must be >= 0"),
            (self.optim.accum >= 1, "optim.accum must be >= 1"),
            (self.optim.lr > 0, "optim.lr must be > 0"),
            (0.0 <= self.train.ema_decay < 1.0, "train.ema_decay must be in [0, 1)"),
            (self.train.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1"),
            (self.train.max_bad_steps >= 1, "train.max_bad_steps must be >= 1"),
            (self.train.threads >= 0, "train.threads must be >= 1, or 0 for auto"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out_dir or Path("runs") / self.run.name)

    @classmethod
    def load(cls, path: str | Path, overrides: Iterable[str] = ()) -> TrainConfig:
        """Read a recipe, apply overrides, and check the model and its arguments without allocating it."""
        cfg = cls.from_dict(apply_overrides(load_yaml(path), overrides))
        cfg.check_model()
        return cfg

    def check_model(self) -> None:
        """Build the model on the meta device: unknown names, arguments and bad values fail here, cheaply."""
        from multimodal import create_model
        from multimodal.models.registry import check_model_name

        check_model_name(self.model.name, key="model.name")
        try:
            with torch.device("meta"):
                create_model(self.model.name, **self.model.args)
        except ConfigError as e:
            raise ConfigError(_under_model_args(str(e))) from None
        except (TypeError, ValueError, ArithmeticError, RuntimeError) as e:  # torch refusing a size, e.g. dim=-1
            raise ConfigError(f"model {self.model.name!r} with args {self.model.args}: {e}") from None


def _under_model_args(message: str) -> str:
    """A model config's error with its keys named as in the recipe: 'depth' -> 'model.args.depth'."""
    message = message.replace("config key '", "config key 'model.args.")
    if message.startswith("unknown config key"):  # the suggestion is a key too (a bad value's is a value)
        message = message.replace("did you mean '", "did you mean 'model.args.")
    return message
