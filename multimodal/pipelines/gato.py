"""Using a trained GATO: act in an environment (prompted with a demonstration) and caption images.

Sequence layout, shared by training (``training/tasks/gato.py``) and these rollouts so the model sees at evaluation
what it saw in training: a control sequence of ``context_length`` tokens is either a window of whole timesteps of
one episode, or a prompt of ``prompt_timesteps`` whole timesteps of another demonstration of the same task followed
by such a window (GATO's prompt conditioning, section 3.3). The prompt takes half of the context.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ..data.control import EnvSpec, Episode, Policy
from ..models.gato import Gato
from ..tokenizers.gato import (
    PATCH_SIZE,
    GatoTokenizer,
    GatoTokens,
    Modality,
    collate_tokens,
    control_image_size,
    image_to_patches,
)

__all__ = [
    "GatoAgent",
    "Task",
    "caption_images",
    "control_layout",
    "judge_caption",
    "named_pairs",
    "prompted_window",
    "route",
]

Task = int | Literal["posterior"] | None  # a task id of the model's cfg.tasks, DEMix's posterior mixture, or none


def route(model: Gato, batch: dict[str, Tensor], task: Task) -> dict[str, Tensor]:
    """``batch`` with what the model's task-routed experts read: ``task`` (B,) for a task id, ``task_weights`` from
    :meth:`Gato.task_posterior` on the batch's context for "posterior", nothing for None (dense models)."""
    if task is None:
        return batch
    if task == "posterior":
        return {**batch, "task_weights": model.task_posterior(batch)}
    if isinstance(task, str):
        raise ValueError(f"task must be a task id, 'posterior' or None, got {task!r}")
    return {**batch, "task": torch.full_like(batch["tokens"][:, 0], task)}


def control_layout(spec: EnvSpec, context_length: int, patch_size: int = PATCH_SIZE) -> tuple[int, int]:
    """(tokens per timestep, prompt timesteps) of ``spec`` in a context of ``context_length`` tokens."""
    if spec.pixels:  # image observations: their patches (GatoTokenizer.encode_arrays resizes them)
        rows, cols = control_image_size(*spec.observation_shape[:2], patch_size)
        observation_tokens = (rows // patch_size) * (cols // patch_size)
    else:
        observation_tokens = spec.observation_dim
    per_step = observation_tokens + 1 + spec.action_dim
    prompt = (context_length // 2) // per_step
    if prompt < 1 or context_length - prompt * per_step < per_step:
        raise ValueError(
            f"a context of {context_length} tokens cannot hold a prompt and a window of {spec.env_id} timesteps "
            f"({per_step} tokens each); raise the model's context_length to at least {2 * per_step}"
        )
    return per_step, prompt


def prompted_window(
    episodes: Sequence[GatoTokens], spec: EnvSpec, context_length: int, rng: np.random.Generator, *, prompt_prob: float
) -> GatoTokens:
    """One control sequence of ``context_length`` tokens at most: with probability ``prompt_prob`` a prompt of
    :func:`control_layout`'s timesteps from one of ``episodes`` (its end, or anywhere, half the time each), then a
    window of whole timesteps of another, at a random start (GATO's prompting, section 3.3)."""
    per_step, prompt_steps = control_layout(spec, context_length)
    index = int(rng.integers(len(episodes)))
    parts = []
    if rng.random() < prompt_prob:
        other = int(rng.integers(len(episodes) - 1)) if len(episodes) > 1 else 0
        other += other >= index and len(episodes) > 1  # another episode than the window's
        demo = episodes[other]
        steps = len(demo) // per_step
        n = min(prompt_steps, steps)
        start = steps - n if rng.random() < 0.5 else int(rng.integers(steps - n + 1))
        parts.append(demo.slice(start * per_step, (start + n) * per_step))
    room = (context_length - sum(len(p) for p in parts)) // per_step
    episode = episodes[index]
    steps = len(episode) // per_step
    n = min(room, steps)
    start = int(rng.integers(steps - n + 1))
    parts.append(episode.slice(start * per_step, (start + n) * per_step))
    return GatoTokens.concat(parts)


class GatoAgent:
    """A :data:`~multimodal.data.control.Policy` backed by a GATO model, for ``run_episodes``.

    Each call reads, for every running env, the prompt (the last ``prompt_timesteps`` of ``demonstration``), then
    as many of that env's latest timesteps as fit, then its current observation and the separator, and decodes the
    action greedily from the ids valid for the env (discrete: [0, num_actions); continuous: the 1,024 bins). Call
    :meth:`reset` before a new batch of episodes. ``task`` routes task-routed experts (see :func:`route`).
    """

    def __init__(
        self,
        model: Gato,
        tokenizer: GatoTokenizer,
        spec: EnvSpec,
        demonstration: Episode | None = None,
        *,
        task: Task = None,
    ) -> None:
        self.model = model
        self.task = task
        self.tokenizer = tokenizer
        self.spec = spec
        self.context_length = model.cfg.context_length
        self.per_step, prompt_steps = control_layout(spec, self.context_length)
        if demonstration is not None:
            expected = spec.observation_shape or (spec.observation_dim,)
            if demonstration.observations.shape[1:] != tuple(expected):
                raise ValueError(
                    f"the demonstration is not a {spec.env_id} episode: its observations have shape "
                    f"{demonstration.observations.shape[1:]}, not {tuple(expected)}"
                )
            tail = slice(max(demonstration.length - prompt_steps, 0), None)
            self.prompt = tokenizer.encode_arrays(demonstration.observations[tail], demonstration.actions[tail])
        else:
            self.prompt = None
        self.token_range = tokenizer.action_range(spec.action_kind, spec.num_actions)
        self.reset()

    def reset(self) -> None:
        self.observations: dict[int, list[np.ndarray]] = {}
        self.actions: dict[int, list[np.ndarray]] = {}

    def _sequence(self, env: int) -> GatoTokens:
        prompt_len = len(self.prompt) if self.prompt is not None else 0
        fit = (self.context_length - prompt_len) // self.per_step  # timesteps of this episode, the current one too
        observations = np.stack(self.observations[env][-fit:])
        actions = self.actions.get(env, [])[-(fit - 1) :] if fit > 1 else []
        actions = np.stack(actions) if actions else np.zeros((0, self.spec.action_dim), self._action_dtype)
        window = self.tokenizer.encode_arrays(observations, actions)
        return GatoTokens.concat([self.prompt, window]) if self.prompt is not None else window

    @property
    def _action_dtype(self) -> type:
        return np.int64 if self.spec.action_kind == "discrete" else np.float32

    @torch.no_grad()
    def __call__(self, observations: np.ndarray, alive: np.ndarray) -> np.ndarray:
        device = next(self.model.parameters()).device
        for env, observation in zip(alive.tolist(), observations, strict=True):
            self.observations.setdefault(env, []).append(
                observation if self.spec.pixels else observation.astype(np.float32)
            )
        batch = collate_tokens([self._sequence(env) for env in alive.tolist()])
        batch = {k: v.to(device) for k, v in batch.items()}
        ids = []
        for _ in range(self.spec.action_dim):  # action values one token at a time, each fed back
            token = self.model.next_token(route(self.model, batch, self.task), self.token_range)  # (N,)
            ids.append(token)
            batch = _append(
                batch, token, Modality.CONTINUOUS if self.spec.action_kind == "continuous" else Modality.DISCRETE
            )
        ids = torch.stack(ids, dim=1).cpu()  # (N, action_dim)
        if self.spec.action_kind == "discrete":
            actions = ids.numpy().astype(np.int64)
        else:
            actions = self.tokenizer.decode_continuous(ids).numpy().astype(np.float32)
        for env, action in zip(alive.tolist(), actions, strict=True):
            self.actions.setdefault(env, []).append(action)
        return actions

    def policy(self) -> Policy:
        """This agent, reset, as a policy for :func:`~multimodal.data.control.run_episodes`."""
        self.reset()
        return self


def _append(batch: dict[str, Tensor], token: Tensor, modality: Modality) -> dict[str, Tensor]:
    """Append one token (B,) to equal-length sequences; it is not an observation token (local position -1)."""
    if not batch["padding_mask"].all():
        raise ValueError("appending needs sequences of equal length (no padding)")
    column = {
        "tokens": token,
        "modality": torch.full_like(token, int(modality)),
        "local_position": torch.full_like(token, -1),
        "loss_mask": torch.ones_like(token, dtype=torch.bool),
        "timestep": batch["timestep"][:, -1],
        "padding_mask": torch.ones_like(token, dtype=torch.bool),
    }
    out = dict(batch)
    for name, value in column.items():
        out[name] = torch.cat([batch[name], value[:, None]], dim=1)
    return out


@torch.no_grad()
def caption_images(
    model: Gato, tokenizer: GatoTokenizer, images: Tensor, *, max_new_tokens: int = 16, task: Task = None
) -> list[str]:
    """Greedy captions of images (N, C, H, W) in [0, 1]: the patches, then text tokens until end-of-text;
    ``task`` routes task-routed experts (see :func:`route`)."""
    device = next(model.parameters()).device
    sequences = []
    for image in images:
        patches, grid = image_to_patches(image.clamp(0, 1).cpu(), patch_size=tokenizer.patch_size)
        n = patches.shape[0]
        sequences.append(
            GatoTokens(
                tokens=torch.arange(n),
                modality=torch.full((n,), int(Modality.IMAGE)),
                local_position=torch.arange(n),
                loss_mask=torch.zeros(n, dtype=torch.bool),
                timestep=torch.zeros(n, dtype=torch.long),
                patches=patches,
                patch_position=grid,
            )
        )
    batch = {k: v.to(device) for k, v in collate_tokens(sequences).items()}
    text_range = (0, tokenizer.text.vocab_size)  # the text tokenizer's ids, not the padding up to V
    generated = []
    done = torch.zeros(len(sequences), dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        token = model.next_token(route(model, batch, task), text_range)  # (N,)
        generated.append(token)
        done |= token == tokenizer.eot_token_id
        if done.all() or batch["tokens"].shape[1] >= model.cfg.context_length:
            break
        batch = _append(batch, token, Modality.TEXT)
        batch["local_position"][:, -1] = batch["local_position"][:, -2] + 1  # text is part of the observation
    ids = torch.stack(generated, dim=1).cpu()  # (N, steps)
    return [tokenizer.decode_text(row) for row in ids]


def named_pairs(caption: str, colours: Sequence[str], shapes: Sequence[str]) -> set[tuple[str, str]]:
    """The (colour, shape) pairs a caption names: each colour word with the first shape word after it."""
    words = re.findall(r"[a-z]+", caption.lower())
    pairs = set()
    for i, word in enumerate(words):
        if word in colours:
            shape = next((w for w in words[i + 1 :] if w in shapes), None)
            if shape is not None:
                pairs.add((word, shape))
    return pairs


def judge_caption(
    caption: str, objects: Sequence[tuple[str, str]], colours: Sequence[str], shapes: Sequence[str]
) -> bool:
    """True when the caption names the main object's (colour, shape) (``objects[0]``) and no pair absent from the
    image: the colour and shape in the caption match the image."""
    pairs = named_pairs(caption, colours, shapes)
    return tuple(objects[0]) in pairs and pairs <= {tuple(o) for o in objects}
