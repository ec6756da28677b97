"""Training: the trainer, its recipes and the families' tasks (``accelerate launch -m training.train RECIPE``)."""
