"""Training: the trainer, its recipes and the families' tasks (``accelerate launch -m training.train RECIPE``)."""

from . import tasks  # noqa: F401 (each task registers the options of its task: section with TaskConfig)
