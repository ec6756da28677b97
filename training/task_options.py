"""The ``task:`` section of each family's recipes: one options class per task, registered with
:class:`~training.config.TaskConfig` by its ``task=`` name.

They live apart from the tasks (``training/tasks/``), which import torch and the model families, so that a recipe is
read and checked, and ``--help`` lists every task's keys, without them.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from .config import TaskConfig

__all__ = [
    "ClassificationOptions",
    "ClipOptions",
    "DecoderOptions",
    "GatoOptions",
    "LmOptions",
    "PriorOptions",
    "UpsamplerOptions",
]


@dataclasses.dataclass(frozen=True)
class ClassificationOptions(TaskConfig, task="classification"):
    label_smoothing: float = 0.0
    aux_loss_weight: float = 0.01  # mixture-of-experts load balancing (Switch Transformer's alpha)


@dataclasses.dataclass(frozen=True)
class ClipOptions(TaskConfig, task="clip"):
    loss: Literal["clip", "siglip"] = "clip"  # the contrastive loss of the image and text towers
    grad_cache_chunks: int = 1  # the exact gradient of a batch computed in this many chunks (GradCache)
    zeroshot_splits: tuple[str, ...] = ()  # splits to zero-shot classify (default: data.eval_split)


@dataclasses.dataclass(frozen=True)
class GatoOptions(TaskConfig, task="gato"):
    mixture: dict[str, float] = dataclasses.field(default_factory=dict)  # dataset card -> share of a batch
    prompt_prob: float = 0.25  # share of control sequences prefixed with a demonstration of the same task
    eval_episodes: int = 5  # rollouts per control dataset at each evaluation
    eval_samples: int = 64  # images captioned at each evaluation
    text_vocabulary: Literal["bpe", "captions"] = "bpe"  # open_clip's BPE, or only the captions' tokens
    aux_loss_weight: float = 0.01  # experts' load balancing (Switch Transformer's alpha; token and task MoE)


@dataclasses.dataclass(frozen=True)
class LmOptions(TaskConfig, task="lm"):
    vocab_size: int = 64  # ids, BOS (0) included; written into model.args
    min_period: int = 8  # each sequence says a segment of between min_period and max_period tokens twice
    max_period: int = 24
    score_period: int = 20  # head scores: BOS, then this many uniform random ids, twice
    sharpness: float = 2.0  # std of the Markov chain's transition logits
    second_order: float = 0.0  # weight of the token two back in them (0: a bigram chain)
    chain_seed: int = 0  # the chain every run of the recipe shares
    eval_sequences: int = 512


@dataclasses.dataclass(frozen=True)
class _SamplingOptions(TaskConfig):
    eval_samples: int = 64  # evaluation samples drawn at each evaluation
    sample_steps: int = 25  # DPM-Solver++ steps of evaluation samples


@dataclasses.dataclass(frozen=True)
class _ClipConditionedOptions(_SamplingOptions):
    clip: str | None = None  # the frozen CLIP's run directory
    guidance_scale: float = 3.0  # classifier-free guidance of evaluation samples


@dataclasses.dataclass(frozen=True)
class PriorOptions(_ClipConditionedOptions, task="unclip_prior"):
    """The prior's options: the CLIP it is conditioned on and the sampling settings."""


@dataclasses.dataclass(frozen=True)
class DecoderOptions(_ClipConditionedOptions, task="unclip_decoder"):
    """The decoder's options: the CLIP it is conditioned on and the sampling settings."""


@dataclasses.dataclass(frozen=True)
class UpsamplerOptions(_SamplingOptions, task="unclip_upsampler"):
    """The upsampler's options: the sampling settings alone."""
