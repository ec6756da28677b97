"""Tasks: what a model family contributes to the trainer (model, data, loss, evaluation)."""

from __future__ import annotations

from accelerate import Accelerator

from ..config import TrainConfig
from .base import Task
from .classification import ClassificationTask
from .clip import ClipTask
from .gato import GatoTask
from .lm import LmTask
from .unclip import DecoderTask, PriorTask, UpsamplerTask

__all__ = [
    "TASKS",
    "ClassificationTask",
    "ClipTask",
    "DecoderTask",
    "GatoTask",
    "LmTask",
    "PriorTask",
    "Task",
    "UpsamplerTask",
    "build_task",
]

TASKS: dict[str, type[Task]] = {
    "classification": ClassificationTask,
    "clip": ClipTask,
    "unclip_prior": PriorTask,
    "unclip_decoder": DecoderTask,
    "unclip_upsampler": UpsamplerTask,
    "gato": GatoTask,
    "lm": LmTask,
}


def build_task(cfg: TrainConfig, acc: Accelerator | None = None) -> Task:
    return TASKS[cfg.task.name](cfg, acc)
