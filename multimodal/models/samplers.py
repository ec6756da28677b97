"""The names of the samplers (diffusers schedulers) every diffusion stage can sample with; ``diffusion.py`` builds
them. Apart from it so that a command line offers them without importing diffusers."""

from __future__ import annotations

__all__ = ["SAMPLERS"]

SAMPLERS = ("dpmsolver++", "ddim", "ddpm")
