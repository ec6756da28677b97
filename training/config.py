"""The training recipe: a frozen, typed tree read from ``configs/<family>/<recipe>.yaml``."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import inspect
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from multimodal.config import Config, ConfigError, apply_overrides, load_yaml
from multimodal.data.constants import IMAGENET_MEAN, IMAGENET_STD, STOP_SIGNALS
from multimodal.models.registry import check_model_name, create_model

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["DataConfig", "ModelSpec", "OptimConfig", "RunConfig", "TaskConfig", "TrainConfig", "TrainLoopConfig"]


@dataclasses.dataclass(frozen=True)
class RunConfig(Config):
    name: str = "run"
    out_dir: str | None = None  # default: runs/<name>
    seed: int = 0
    overwrite: bool = False  # allow starting afresh in a run directory that holds a run


@dataclasses.dataclass(frozen=True)
class TaskConfig(Config):
    """The ``task`` section: ``name`` picks the task, the rest are that task's options.

    Each task declares its options as a subclass, ``class ClipOptions(TaskConfig, task="clip")``;
    :meth:`from_dict` builds the subclass ``name`` asks for, so a key of another task is an unknown key.
    """

    name: str = "classification"

    _KINDS: ClassVar[dict[str, type[TaskConfig]]] = {}

    def __init_subclass__(cls, task: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if task is not None:  # ``name`` defaults to the task's name; @dataclass, applied next, makes it the field's
            cls.__annotations__ = {"name": "str", **inspect.get_annotations(cls)}
            cls.name = task
            TaskConfig._KINDS[task] = cls

    @staticmethod
    def kinds() -> dict[str, type[TaskConfig]]:
        """Task name -> its options class, for every task the trainer knows."""
        importlib.import_module("training.task_options")  # defines (and so registers) them; once
        return dict(TaskConfig._KINDS)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, *, prefix: str = "task.", known: Sequence[str] = ()) -> Any:
        data = dict(data or {})
        name = data.get("name", "classification")
        kinds = TaskConfig.kinds()
        kind = kinds.get(name) if isinstance(name, str) else None
        if kind is None:
            close = difflib.get_close_matches(str(name), kinds, n=1)
            raise ConfigError(
                f"config key {prefix + 'name'!r} must be one of {', '.join(map(repr, kinds))}, "
                f"got {name!r}" + (f"; did you mean {close[0]!r}?" if close else "")
            )
        if cls is not TaskConfig and kind is not cls:
            raise ConfigError(f"{prefix}name={name!r} does not name the {cls.__name__} options")
        return super(TaskConfig, kind).from_dict({**data, "name": name}, prefix=prefix, known=known)


@dataclasses.dataclass(frozen=True)
class ModelSpec(Config):
    """A registered model (``multimodal.list_models()``) and overrides of its preset config."""

    name: str = "vit_nano_patch4_32"
    args: dict[str, Any] = dataclasses.field(default_factory=dict)
    init_from: str | None = None  # a run (or its checkpoints/step-* folder) whose weights start this one

    def build(self, device: str | torch.device | None = None) -> nn.Module:
        """The model, with ``init_from``'s weights (its EMA where it kept one) unless built on the meta device; a
        wrong name, argument or value, or weights of another shape, is a :class:`ConfigError` naming its key."""
        import torch  # here, not above: reading a recipe needs no torch
        from safetensors.torch import load_file

        from multimodal.runs import run_weights

        check_model_name(self.name, key="model.name")
        try:
            with torch.device(device) if device is not None else contextlib.nullcontext():
                model = create_model(self.name, **self.args)
        except ConfigError as e:
            raise ConfigError(_under_model_args(str(e))) from None
        except (TypeError, ValueError, ArithmeticError, RuntimeError) as e:  # torch refusing a size, e.g. dim=-1
            raise ConfigError(f"model {self.name!r} with args {self.args}: {e}") from None
        if self.init_from is not None and str(device) != "meta":
            weights = run_weights(self.init_from)
            try:
                model.load_state_dict(load_file(str(weights)))
            except RuntimeError as e:
                first = str(e).split("\n\t")[1] if "\n\t" in str(e) else str(e)
                raise ConfigError(
                    f"model.init_from={self.init_from}: its weights do not fit model {self.name!r} with these "
                    f"model.args ({first.strip()}); use the model.args that run trained with"
                ) from None
        return model


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
    # rts: every image rotated, scaled and translated on a larger canvas (Jaderberg et al.'s RTS data), drawn anew
    # each epoch in training and the same for each evaluation sample every time
    distort: Literal["none", "rts"] = "none"
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
    # wsd: warmup, then stable at lr, then a linear decay to min_lr_ratio over the last decay_fraction of the steps
    # (Hagele et al. 2024); the CPU CLIP recipes learn shapes late, which a decay from the start (cosine) cuts short
    schedule: Literal["cosine", "linear", "constant", "wsd"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    decay_fraction: float = 0.2  # wsd only
    grad_clip: float | None = 1.0
    # learning-rate multipliers by parameter-name prefix, e.g. {"st.": 0.1}: a spatial transformer's localisation net
    # learning ten times slower than the model behind it; the longest matching prefix wins
    lr_mult: dict[str, float] | None = None
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
    keep_freed_memory: bool = True  # CPU: glibc reuses freed tensor memory instead of page-faulting it back each step
    stop_signals: tuple[str, ...] = ("SIGTERM",)  # stop at the next step with a checkpoint (add SIGUSR1 for SLURM)
    fsdp: bool = False  # shard weights, gradients and optimizer state over the processes (FSDP2; GPUs or CPU/gloo)
    compile: bool = False  # torch.compile (inductor) the model's forward in place; README: measured per family


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    task: TaskConfig = dataclasses.field(default_factory=lambda: TaskConfig.from_dict({}))
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
            (0.0 < self.optim.decay_fraction <= 1.0, "optim.decay_fraction must be in (0, 1]"),
            (0.0 <= self.train.ema_decay < 1.0, "train.ema_decay must be in [0, 1)"),
            (self.train.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1"),
            (self.train.max_bad_steps >= 1, "train.max_bad_steps must be >= 1"),
            (self.train.threads >= 0, "train.threads must be >= 1, or 0 for auto"),
            (
                not (self.train.fsdp and self.train.ema_decay > 0),
                "train.fsdp=true does not keep an EMA yet (it would need the whole model on every process); "
                "set train.ema_decay=0 or train.fsdp=false",
            ),
            (
                not (self.train.fsdp and self.train.precision == "fp16"),
                "train.fsdp=true trains in fp32 or bf16 (FSDP2 has no gradient scaler); set train.precision=bf16",
            ),
            (
                not (self.train.fsdp and self.train.compile),
                "train.compile=true has not been tested with train.fsdp=true; set one of them to false",
            ),
            (
                set(self.train.stop_signals) <= set(STOP_SIGNALS),
                f"train.stop_signals may name {', '.join(STOP_SIGNALS)}; got {list(self.train.stop_signals)}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out_dir or Path("runs") / self.run.name)

    @classmethod
    def load(cls, path: str | Path, overrides: Iterable[str] = ()) -> TrainConfig:
        """Read a recipe and apply overrides; every key and type is checked (the model when it is built)."""
        cfg = cls.from_dict(apply_overrides(load_yaml(path), overrides))
        check_model_name(cfg.model.name, key="model.name")
        return cfg

    def check_model(self) -> None:
        """Build the model on the meta device: unknown names, arguments and bad values fail here, cheaply."""
        self.model.build(device="meta")


def _under_model_args(message: str) -> str:
    """A model config's error with its keys named as in the recipe: 'depth' -> 'model.args.depth'."""
    message = message.replace("config key '", "config key 'model.args.")
    if message.startswith("unknown config key"):  # the suggestion is a key too (a bad value's is a value)
        message = message.replace("did you mean '", "did you mean 'model.args.")
    return message
