"""Tasks: what a model family contributes to the trainer (model, data, loss, evaluation)."""

from __future__ import annotations

from accelerate import Accelerator

from ..config import TrainConfig
from .base import Task
from .classification import ClassificationTask
from .clip import ClipTask

__all__ = ["TASKS", "ClassificationTask", "ClipTask", "Task", "build_task"]

TASKS: dict[str, type[Task]] = {"classification": ClassificationTask, "clip": ClipTask}


def build_task(cfg: TrainConfig, acc: Accelerator | None = None) -> Task:
    return TASKS[cfg.task.name](cfg, acc)
