"""What the unCLIP prior, decoder and upsampler share: the training noise schedule, the loss target and weighting,
the sampling schedulers (diffusers classes) and the classifier-free-guided sampling loop.

The networks stay plain modules; each model wraps one and owns ``loss()`` and ``sample()`` built from these pieces.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from .samplers import SAMPLERS

__all__ = [
    "PREDICTION_TYPES",
    "SAMPLERS",
    "guided_sample",
    "loss_weights",
    "make_noise_scheduler",
    "make_sampler",
    "prediction_target",
]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
# DPM-Solver++ with a cosine schedule diverges near t = T, where log-SNR goes to -inf, unless the largest steps are
# clipped away; -5.1 is diffusers' value for the cosine schedule (the improved-DDPM / unCLIP setting).
COSINE_LAMBDA_MIN_CLIPPED = -5.1


def make_noise_scheduler(
    *, num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2", prediction_type: str = "epsilon"
) -> DDPMScheduler:
    """The training noise schedule (also the config every sampler is built from)."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        prediction_type=prediction_type,
        clip_sample=False,
    )


def make_sampler(name: str, noise_scheduler: DDPMScheduler) -> SchedulerMixin:
    """A sampling scheduler for a model trained with ``noise_scheduler``: "dpmsolver++" (default), "ddim", "ddpm"."""
    config = noise_scheduler.config
    if name == "dpmsolver++":
        clipped = COSINE_LAMBDA_MIN_CLIPPED if config.beta_schedule == "squaredcos_cap_v2" else -float("inf")
        return DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=2, lambda_min_clipped=clipped
        )
    if name == "ddim":
        return DDIMScheduler.from_config(config, set_alpha_to_one=False, timestep_spacing="trailing")
    if name == "ddpm":
        return DDPMScheduler.from_config(config)
    raise ValueError(f"unknown sampler {name!r}; choose one of {SAMPLERS}")


def prediction_target(scheduler: DDPMScheduler, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """What the network learns to output at timesteps ``t``: the noise, the clean sample, or the velocity."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    return scheduler.get_velocity(x0, noise, t)


def loss_weights(scheduler: DDPMScheduler, t: Tensor, *, min_snr_gamma: float | None) -> Tensor:
    """Per-sample loss weights (B,) that turn the plain MSE on the prediction target into min-SNR-gamma weighting
    (Hang et al. 2023: weight the x0 error by min(SNR, gamma)); ones without ``min_snr_gamma``."""
    if min_snr_gamma is None:
        return torch.ones(t.shape, device=t.device)
    alphas = scheduler.alphas_cumprod.to(t.device)[t]
    snr = alphas / (1 - alphas)  # (B,)
    clipped = snr.clamp(max=min_snr_gamma)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":  # ||eps error||^2 = SNR * ||x0 error||^2
        return clipped / snr
    if kind == "v_prediction":  # ||v error||^2 = (SNR + 1) * ||x0 error||^2
        return clipped / (snr + 1)
    return clipped


def guided_sample(
    denoise: Callable[[Tensor, Tensor], Tensor],
    sampler: SchedulerMixin,
    shape: tuple[int, ...],
    *,
    num_inference_steps: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Run ``sampler`` from pure noise of ``shape``: ``denoise(x_t, t)`` returns the (already guided) model output
    for the batch x_t at the scalar timestep t. Noise comes from ``generator`` (a CPU generator gives the same noise
    on any device)."""
    sampler.set_timesteps(num_inference_steps, device=device)
    x = randn_tensor(shape, generator=generator, device=torch.device(device), dtype=torch.float32).to(dtype)
    x = x * sampler.init_noise_sigma
    step_kwargs = {"generator": generator} if isinstance(sampler, DDPMScheduler | DDIMScheduler) else {}
    for t in sampler.timesteps:
        model_in = sampler.scale_model_input(x, t)
        out = denoise(model_in, t)
        x = sampler.step(out, t, x, **step_kwargs).prev_sample
    return x
