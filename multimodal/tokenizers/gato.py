"""GATO's multimodal tokenizer (Reed et al. 2022, section 2.1): text, images, discrete and continuous values, one
sequence.

What the paper fixes, and this module follows exactly:

- **Text** through a subword tokenizer (SentencePiece with 32,000 tokens in the paper; open_clip's 49,408-token BPE
  here by default, pluggable). Its vocabulary size V is the offset of the continuous range.
- **Discrete values** (button presses, CartPole's push direction) are flattened row-major to integers in
  [0, 1024). As in the paper they share ids with the first 1,024 text tokens: one embedding table serves both.
- **Continuous values** are flattened row-major, mu-law encoded,
  F(x) = sgn(x) ln(|x| mu + 1) / ln(M mu + 1) with mu = 100, M = 256, clipped to [-1, 1], discretised into 1,024
  uniform bins, ``bin = floor((F + 1) / 2 * 1024)`` with F = 1.0 in bin 1023 (not 1024), and shifted to
  [V, V + 1024). Decoding returns the bin centre through the inverse mu-law.
- **Images** are cut into non-overlapping 16 x 16 patches in raster order, pixels normalised to [-1, 1] and then
  divided by sqrt(16) = 4.
- **Order**: text tokens in order, image patches in raster order, tensors row-major, nested observations by key in
  lexicographic order; each timestep is its observation tokens, the separator '|', then its action tokens;
  timesteps in time order.

Where the paper is silent, we choose (and say so here):

- The separator '|' is its own id, V + 1024, right after the continuous range (the paper names no id).
- A text value ends with the text tokenizer's end-of-text id, so a generated caption knows where to stop; no
  start-of-text id is added (the tokens before the text are its context).
- Values say their kind by type: ``str`` is text, integer and bool arrays are discrete, floating arrays are
  continuous, and an image must be wrapped in :class:`Image` (a uint8 array could as well be RAM bytes).
  :class:`Discrete` and :class:`Continuous` force a kind.
- The local position of a token is its index within its timestep's observation; the separator and action tokens get
  ``-1`` (the model gives them one shared learned vector, as the paper's figure 15 gives all action tokens one).
- V may exceed the text tokenizer's vocabulary: a corpus-sized :class:`~multimodal.tokenizers.SubsetTokenizer`
  of a few hundred ids still needs V >= 1,024 for the discrete range, and the ids between stay unused.
- A tokenizer saves to JSON (:meth:`GatoTokenizer.save`, ``gato_tokenizer.json`` in a training run), so that a
  run's evaluation reads its text with the ids it was trained on.

The loss mask is 1 exactly on text tokens and action tokens: the model learns to predict what it will be asked to
produce (captions, actions), not the observations.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from enum import IntEnum
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from ..io import atomic_write_json
from .text import ClipTokenizer, SubsetTokenizer

__all__ = [
    "TOKENIZER_FILE",
    "Continuous",
    "Discrete",
    "GatoTokenizer",
    "GatoTokens",
    "Image",
    "Modality",
    "TextTokenizer",
    "bins_to_continuous",
    "collate_tokens",
    "continuous_to_bins",
    "control_image_size",
    "image_to_patches",
    "inverse_mu_law",
    "mu_law",
]

MU = 100.0
M = 256.0
NUM_BINS = 1024
NUM_DISCRETE = 1024
PATCH_SIZE = 16
TOKENIZER_FILE = "gato_tokenizer.json"  # where a training run saves its tokenizer


class Modality(IntEnum):
    """What each token of a :class:`GatoTokens` sequence carries."""

    TEXT = 0
    IMAGE = 1
    DISCRETE = 2
    CONTINUOUS = 3
    SEPARATOR = 4


# ---------------------------------------------------------------------------------------------------------------
# Continuous values


def mu_law(x: Tensor, *, mu: float = MU, m: float = M) -> Tensor:
    """F(x) = sgn(x) ln(|x| mu + 1) / ln(M mu + 1), unclipped: |x| = M maps to 1."""
    return torch.sign(x) * torch.log1p(x.abs() * mu) / math.log(m * mu + 1.0)


def inverse_mu_law(y: Tensor, *, mu: float = MU, m: float = M) -> Tensor:
    """The inverse of :func:`mu_law` on [-1, 1]."""
    return torch.sign(y) * torch.expm1(y.abs() * math.log(m * mu + 1.0)) / mu


def continuous_to_bins(x: Tensor, *, mu: float = MU, m: float = M, num_bins: int = NUM_BINS) -> Tensor:
    """Real values -> bin ids in [0, num_bins): mu-law, clip to [-1, 1], ``floor((F + 1) / 2 * num_bins)``.

    F = 1 (any |x| >= M) lands in the last bin, num_bins - 1, not one past it. Computed in float64 so the bin
    boundaries are exact to well below a bin's width.
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("continuous values must be finite; got NaN or infinity")
    f = mu_law(x, mu=mu, m=m).clamp(-1.0, 1.0)
    return torch.floor((f + 1.0) / 2.0 * num_bins).long().clamp(max=num_bins - 1)


def bins_to_continuous(bins: Tensor, *, mu: float = MU, m: float = M, num_bins: int = NUM_BINS) -> Tensor:
    """Bin ids -> the value at each bin's centre (through the inverse mu-law), float32."""
    bins = torch.as_tensor(bins)
    if bins.numel() and (bins.min() < 0 or bins.max() >= num_bins):
        raise ValueError(f"bin ids must lie in [0, {num_bins}), got [{int(bins.min())}, {int(bins.max())}]")
    centre = (bins.double() + 0.5) / num_bins * 2.0 - 1.0
    return inverse_mu_law(centre, mu=mu, m=m).float()


# ---------------------------------------------------------------------------------------------------------------
# Images


def control_image_size(height: int, width: int, patch_size: int = PATCH_SIZE) -> tuple[int, int]:
    """The size an image observation of a control task is resized to: the largest multiple of the patch size
    (a 56 x 56 MiniGrid view -> 48 x 48, 3 x 3 patches of 16 px)."""
    size = (height // patch_size * patch_size, width // patch_size * patch_size)
    if min(size) == 0:
        raise ValueError(f"an image observation of {height}x{width} px is smaller than one {patch_size}-px patch")
    return size


def image_to_patches(image: Tensor | np.ndarray, *, patch_size: int = PATCH_SIZE) -> tuple[Tensor, Tensor]:
    """An image (C, H, W) -> patches (P, C, patch, patch) in raster order and their (row, col) grid positions (P, 2).

    A uint8 image is read as [0, 255], a floating one as [0, 1]; pixels go to [-1, 1] and are divided by
    sqrt(patch_size) (sqrt(16) = 4, as the paper). H and W must be multiples of ``patch_size``.
    """
    image = torch.as_tensor(image)
    if image.ndim != 3:
        raise ValueError(f"an image must be (C, H, W), got shape {tuple(image.shape)}")
    c, h, w = image.shape
    if h % patch_size or w % patch_size:
        raise ValueError(
            f"image size {h}x{w} is not a multiple of the {patch_size}-pixel patch; resize or crop it first"
        )
    if image.dtype == torch.uint8:
        pixels = image.float() / 255.0
    elif image.is_floating_point():
        if image.numel() and (image.min() < 0.0 or image.max() > 1.0):
            raise ValueError(
                f"a floating image must hold pixels in [0, 1], got [{float(image.min()):.3g}, "
                f"{float(image.max()):.3g}]; pass uint8 for [0, 255]"
            )
        pixels = image.float()
    else:
        raise ValueError(f"an image must be uint8 or floating, got {image.dtype}")
    pixels = (pixels * 2.0 - 1.0) / math.sqrt(patch_size)
    rows, cols = h // patch_size, w // patch_size
    patches = pixels.reshape(c, rows, patch_size, cols, patch_size).permute(1, 3, 0, 2, 4)  # (rows, cols, C, p, p)
    grid = torch.stack(torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij"), dim=-1)
    return patches.reshape(rows * cols, c, patch_size, patch_size), grid.reshape(-1, 2)


# ---------------------------------------------------------------------------------------------------------------
# Typed values


@dataclass(frozen=True)
class Image:
    """An image observation, (C, H, W) uint8 in [0, 255] or floating in [0, 1]."""

    pixels: Any


@dataclass(frozen=True)
class Discrete:
    """Integer values in [0, 1024), any shape (flattened row-major)."""

    values: Any


@dataclass(frozen=True)
class Continuous:
    """Real values, any shape (flattened row-major)."""

    values: Any


class TextTokenizer(Protocol):
    """What the GATO tokenizer needs of a text tokenizer (:class:`~multimodal.tokenizers.ClipTokenizer` has it)."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def eot_token_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


# ---------------------------------------------------------------------------------------------------------------
# Token sequences


@dataclass
class GatoTokens:
    """One tokenized sequence of T tokens with P image patches.

    ``tokens`` holds the vocabulary id of each text, discrete, continuous and separator token and, for an image
    token, the index of its patch in ``patches``. The other per-token fields are (T,) as well.
    """

    tokens: Tensor  # (T,) int64
    modality: Tensor  # (T,) int64, a Modality
    local_position: Tensor  # (T,) int64, index within the timestep's observation; -1 for separator and actions
    loss_mask: Tensor  # (T,) bool, True on text and action tokens
    timestep: Tensor  # (T,) int64, the timestep each token belongs to
    patches: Tensor  # (P, C, patch, patch) float32
    patch_position: Tensor  # (P, 2) int64, (row, col) of each patch in its image

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @classmethod
    def concat(cls, parts: Sequence[GatoTokens]) -> GatoTokens:
        """Parts one after the other; image token ids are re-indexed into the joined patches."""
        if not parts:
            raise ValueError("nothing to concatenate")
        tokens, offset = [], 0
        for part in parts:
            is_image = part.modality == Modality.IMAGE
            tokens.append(torch.where(is_image, part.tokens + offset, part.tokens))
            offset += part.patches.shape[0]
        joined = {f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(cls)}
        joined["tokens"] = torch.cat(tokens)
        return cls(**joined)

    def slice(self, start: int, stop: int) -> GatoTokens:
        """Tokens [start, stop), keeping only the patches they use (re-indexed)."""
        tokens, modality = self.tokens[start:stop].clone(), self.modality[start:stop]
        is_image = modality == Modality.IMAGE
        used = tokens[is_image]
        tokens[is_image] = torch.arange(used.numel())
        return GatoTokens(
            tokens=tokens,
            modality=modality,
            local_position=self.local_position[start:stop],
            loss_mask=self.loss_mask[start:stop],
            timestep=self.timestep[start:stop],
            patches=self.patches[used],
            patch_position=self.patch_position[used],
        )


class GatoTokenizer:
    """Observations, actions and text -> :class:`GatoTokens`, and action tokens back to values.

    Ids: text [0, V), discrete [0, 1024) (shared with text, as the paper), continuous [V, V + 1024), separator
    V + 1024; ``vocab_size`` = V + 1025 is the size of the model's embedding table.
    """

    def __init__(
        self,
        text_tokenizer: TextTokenizer | None = None,
        *,
        text_vocab_size: int | None = None,
        num_bins: int = NUM_BINS,
        mu: float = MU,
        m: float = M,
        patch_size: int = PATCH_SIZE,
    ) -> None:
        if text_tokenizer is None:
            text_tokenizer = ClipTokenizer()
        self.text = text_tokenizer
        self.text_vocab_size = text_tokenizer.vocab_size if text_vocab_size is None else text_vocab_size
        if self.text_vocab_size < text_tokenizer.vocab_size:
            raise ValueError(
                f"text_vocab_size={self.text_vocab_size} is smaller than the text tokenizer's vocabulary "
                f"({text_tokenizer.vocab_size}); text ids would spill into the continuous range"
            )
        if self.text_vocab_size < NUM_DISCRETE:
            raise ValueError(
                f"text_vocab_size must be >= {NUM_DISCRETE} (discrete ids share it), got {self.text_vocab_size}"
            )
        self.num_bins = num_bins
        self.mu = mu
        self.m = m
        self.patch_size = patch_size

    # --- vocabulary layout -------------------------------------------------------------------------------------

    @property
    def continuous_offset(self) -> int:
        return self.text_vocab_size

    @property
    def separator_id(self) -> int:
        return self.text_vocab_size + self.num_bins

    @property
    def vocab_size(self) -> int:
        return self.separator_id + 1

    @property
    def eot_token_id(self) -> int:
        return self.text.eot_token_id

    def check_model(self, cfg: Any) -> None:
        """Raise if a model config's vocabulary layout (text ids, bins, patch size) is not this tokenizer's."""
        theirs = (cfg.text_vocab_size, cfg.num_bins, cfg.patch_size)
        if theirs != (self.text_vocab_size, self.num_bins, self.patch_size):
            raise ValueError(
                f"the model's vocabulary layout (text {theirs[0]}, bins {theirs[1]}, patch {theirs[2]}) does not "
                f"match the tokenizer's ({self.text_vocab_size}, {self.num_bins}, {self.patch_size})"
            )

    def action_range(self, kind: str, num_actions: int | None = None) -> tuple[int, int]:
        """The ids [lo, hi) an action of ``kind`` ("discrete" with ``num_actions``, or "continuous") may take."""
        if kind == "discrete":
            if num_actions is None or not 1 <= num_actions <= NUM_DISCRETE:
                raise ValueError(f"a discrete action needs num_actions in [1, {NUM_DISCRETE}], got {num_actions}")
            return 0, num_actions
        if kind == "continuous":
            return self.continuous_offset, self.continuous_offset + self.num_bins
        raise ValueError(f"action kind must be 'discrete' or 'continuous', got {kind!r}")

    # --- single values -------------------------------------------------------------------------------------------

    def encode_continuous(self, values: Any) -> Tensor:
        """Real values (any shape) -> ids in [V, V + 1024), flattened row-major."""
        return (
            continuous_to_bins(values, mu=self.mu, m=self.m, num_bins=self.num_bins).flatten() + self.continuous_offset
        )

    def decode_continuous(self, ids: Tensor) -> Tensor:
        """Ids in [V, V + 1024) -> bin-centre values (float32), same shape."""
        ids = torch.as_tensor(ids)
        return bins_to_continuous(ids - self.continuous_offset, mu=self.mu, m=self.m, num_bins=self.num_bins)

    def encode_discrete(self, values: Any) -> Tensor:
        """Integers in [0, 1024) (any shape) -> ids, flattened row-major."""
        values = torch.as_tensor(np.asarray(values))
        if values.is_floating_point() or values.is_complex():
            raise ValueError(f"discrete values must be integers, got {values.dtype}; wrap reals in Continuous")
        values = values.long().flatten()
        if values.numel() and (values.min() < 0 or values.max() >= NUM_DISCRETE):
            raise ValueError(
                f"discrete values must lie in [0, {NUM_DISCRETE}), got [{int(values.min())}, {int(values.max())}]"
            )
        return values

    def encode_text(self, text: str) -> Tensor:
        """BPE ids of ``text`` followed by end-of-text."""
        return torch.tensor([*self.text.encode(text), self.eot_token_id], dtype=torch.long)

    def decode_text(self, ids: Tensor | list[int]) -> str:
        """Text ids up to (not including) the first end-of-text."""
        ids = torch.as_tensor(ids).tolist()
        if self.eot_token_id in ids:
            ids = ids[: ids.index(self.eot_token_id)]
        return self.text.decode(ids)

    # --- sequences ---------------------------------------------------------------------------------------------

    def _value(self, value: Any, path: str) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """One leaf value -> (ids, modality, patches, patch positions)."""
        if isinstance(value, Image):
            patches, positions = image_to_patches(value.pixels, patch_size=self.patch_size)
            ids = torch.arange(patches.shape[0])
            return ids, torch.full_like(ids, Modality.IMAGE), patches, positions
        if isinstance(value, str):
            ids = self.encode_text(value)
            return ids, torch.full_like(ids, Modality.TEXT), None, None
        if isinstance(value, Discrete):
            ids = self.encode_discrete(value.values)
            return ids, torch.full_like(ids, Modality.DISCRETE), None, None
        if isinstance(value, Continuous):
            ids = self.encode_continuous(value.values)
            return ids, torch.full_like(ids, Modality.CONTINUOUS), None, None
        if isinstance(value, (bool, int, float, np.ndarray, np.generic, Tensor, list, tuple)):
            array = torch.as_tensor(np.asarray(value))
            if array.dtype == torch.bool or not (array.is_floating_point() or array.is_complex()):
                return self._value(Discrete(array), path)
            if array.is_floating_point():
                return self._value(Continuous(array), path)
        raise ValueError(
            f"cannot tokenize {path or 'the value'} of type {type(value).__name__}: use a str, an integer or "
            "floating array, or wrap it in Image, Discrete or Continuous"
        )

    def _flatten(self, value: Any, path: str = "") -> list[tuple[str, Any]]:
        """Nested mappings -> (path, leaf) in lexicographic key order at every level."""
        if isinstance(value, Mapping):
            for key in value:
                if not isinstance(key, str):
                    raise ValueError(f"observation keys must be strings, got {key!r} at {path or 'the top'}")
            items = []
            for key in sorted(value):
                items += self._flatten(value[key], f"{path}.{key}" if path else key)
            return items
        return [(path, value)]

    def _tokens(self, value: Any, *, observation: bool, timestep: int) -> GatoTokens:
        ids, modality, patches, positions = [], [], [], []
        for path, leaf in self._flatten(value):
            leaf_ids, leaf_modality, leaf_patches, leaf_positions = self._value(leaf, path)
            if leaf_patches is not None:
                leaf_ids = leaf_ids + sum(p.shape[0] for p in patches)  # index into this value's joined patches
                patches.append(leaf_patches)
                positions.append(leaf_positions)
            ids.append(leaf_ids)
            modality.append(leaf_modality)
        ids = torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long)
        modality = torch.cat(modality) if modality else torch.zeros(0, dtype=torch.long)
        n = ids.shape[0]
        channels = patches[0].shape[1] if patches else 3
        return GatoTokens(
            tokens=ids,
            modality=modality,
            local_position=torch.arange(n) if observation else torch.full((n,), -1, dtype=torch.long),
            loss_mask=modality == Modality.TEXT if observation else torch.ones(n, dtype=torch.bool),
            timestep=torch.full((n,), timestep, dtype=torch.long),
            patches=torch.cat(patches) if patches else torch.zeros(0, channels, self.patch_size, self.patch_size),
            patch_position=torch.cat(positions) if positions else torch.zeros(0, 2, dtype=torch.long),
        )

    def separator(self, timestep: int = 0) -> GatoTokens:
        """The single separator token '|' between a timestep's observation and its action."""
        one = torch.ones(1, dtype=torch.long)
        return GatoTokens(
            tokens=one * self.separator_id,
            modality=one * Modality.SEPARATOR,
            local_position=-one,
            loss_mask=torch.zeros(1, dtype=torch.bool),
            timestep=one * timestep,
            patches=torch.zeros(0, 3, self.patch_size, self.patch_size),
            patch_position=torch.zeros(0, 2, dtype=torch.long),
        )

    def encode_observation(self, observation: Any, *, timestep: int = 0) -> GatoTokens:
        """One observation (a value or a nested mapping of values) -> its tokens; loss only on its text."""
        tokens = self._tokens(observation, observation=True, timestep=timestep)
        if len(tokens) == 0:
            raise ValueError("an observation must hold at least one value")
        return tokens

    def encode_action(self, action: Any, *, timestep: int = 0) -> GatoTokens:
        """One action (a value or a nested mapping) -> its tokens, all in the loss."""
        tokens = self._tokens(action, observation=False, timestep=timestep)
        if (tokens.modality == Modality.IMAGE).any():
            raise ValueError("an action cannot hold an image")
        if len(tokens) == 0:
            raise ValueError("an action must hold at least one value")
        return tokens

    def encode_timestep(self, observation: Any, action: Any | None = None, *, timestep: int = 0) -> GatoTokens:
        """Observation tokens, '|', then action tokens (or only the first two when ``action`` is None)."""
        parts = [self.encode_observation(observation, timestep=timestep), self.separator(timestep)]
        if action is not None:
            parts.append(self.encode_action(action, timestep=timestep))
        return GatoTokens.concat(parts)

    def encode_episode(self, observations: Sequence[Any], actions: Sequence[Any]) -> GatoTokens:
        """Timesteps in time order; ``observations`` and ``actions`` pair up one to one."""
        if len(observations) != len(actions):
            raise ValueError(f"{len(observations)} observations but {len(actions)} actions; they pair one to one")
        if not observations:
            raise ValueError("an episode needs at least one timestep")
        return GatoTokens.concat(
            [
                self.encode_timestep(o, a, timestep=t)
                for t, (o, a) in enumerate(zip(observations, actions, strict=True))
            ]
        )

    def _array_ids(self, values: Tensor, what: str) -> tuple[Tensor, Modality]:
        """(T, n) values -> (T, n) ids and their modality, discrete for integers and continuous for reals."""
        if values.ndim != 2:
            raise ValueError(f"{what} must be a (T, n) array, got shape {tuple(values.shape)}")
        if values.is_floating_point():
            return self.encode_continuous(values).view(values.shape), Modality.CONTINUOUS
        return self.encode_discrete(values).view(values.shape), Modality.DISCRETE

    def encode_arrays(self, observations: Any, actions: Any, *, first_timestep: int = 0) -> GatoTokens:
        """A control episode of flat observation and action vectors, (T, n) and (T, m): the tokens of
        :meth:`encode_episode` on the same rows, computed without a Python loop. Observations may instead be
        images, (T, H, W, C) uint8: each becomes its patches, resized to the largest multiple of the patch size
        (:func:`control_image_size`).

        ``actions`` may have one row fewer than ``observations``: the last timestep then ends at its separator,
        which is what a policy reads before choosing its next action.
        """
        obs = torch.as_tensor(np.asarray(observations))
        act = torch.as_tensor(np.asarray(actions))
        if obs.ndim == 4:
            return self._encode_image_arrays(obs, act, first_timestep)
        T = obs.shape[0] if obs.ndim == 2 else -1
        if act.ndim != 2 or act.shape[0] not in (T, T - 1) or T < 1:
            raise ValueError(
                f"observations (T, n) need actions (T, m) or (T - 1, m), got {tuple(obs.shape)} and {tuple(act.shape)}"
            )
        obs_ids, obs_modality = self._array_ids(obs, "observations")
        n, m = obs.shape[1], act.shape[1]
        if act.shape[0]:
            act_ids, act_modality = self._array_ids(act, "actions")
        else:
            act_ids, act_modality = torch.zeros(0, m, dtype=torch.long), Modality.DISCRETE
        separator = torch.full((T, 1), self.separator_id)
        act_ids = torch.cat([act_ids, torch.full((T - act.shape[0], m), -1)])  # a missing last action: dropped below
        ids = torch.cat([obs_ids, separator, act_ids], dim=1)  # (T, n + 1 + m)

        def row(obs_value: Any, sep_value: Any, act_value: Any) -> Tensor:  # one timestep's (n + 1 + m,) values
            return torch.tensor([obs_value] * n + [sep_value] + [act_value] * m)

        fields = {
            "modality": row(obs_modality, Modality.SEPARATOR, act_modality).expand(T, -1),
            "local_position": torch.cat([torch.arange(n), torch.full((1 + m,), -1)]).expand(T, -1),
            "loss_mask": row(False, False, True).expand(T, -1),
            "timestep": (torch.arange(T) + first_timestep)[:, None].expand(-1, n + 1 + m),
        }
        keep = (ids >= 0).flatten()
        return GatoTokens(
            tokens=ids.flatten()[keep],
            **{name: value.flatten()[keep] for name, value in fields.items()},
            patches=torch.zeros(0, 3, self.patch_size, self.patch_size),
            patch_position=torch.zeros(0, 2, dtype=torch.long),
        )

    def _encode_image_arrays(self, images: Tensor, actions: Tensor, first_timestep: int) -> GatoTokens:
        """(T, H, W, C) uint8 observations and (T | T - 1, m) actions -> the timesteps' tokens."""
        T = images.shape[0]
        if images.dtype != torch.uint8 or actions.ndim != 2 or actions.shape[0] not in (T, T - 1) or T < 1:
            raise ValueError(
                f"image observations (T, H, W, C) uint8 need actions (T, m) or (T - 1, m), got "
                f"{tuple(images.shape)} {images.dtype} and {tuple(actions.shape)}"
            )
        pixels = images.permute(0, 3, 1, 2).float() / 255.0  # (T, C, H, W) in [0, 1]
        size = control_image_size(pixels.shape[2], pixels.shape[3], self.patch_size)
        if size != tuple(pixels.shape[2:]):
            pixels = torch.nn.functional.interpolate(pixels, size=size, mode="area").clamp(0.0, 1.0)
        wrap = Continuous if actions.is_floating_point() else Discrete
        return GatoTokens.concat(
            [
                self.encode_timestep(
                    {"image": Image(pixels[t])},
                    wrap(actions[t]) if t < actions.shape[0] else None,
                    timestep=first_timestep + t,
                )
                for t in range(T)
            ]
        )

    def encode_caption(self, image: Any, caption: str) -> GatoTokens:
        """A vision-language sample: the image's patches then the caption's text (the loss is on the text)."""
        return self.encode_observation({"image": Image(image), "text": caption})

    # --- saving ---------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Everything that rebuilds this tokenizer, as JSON-ready values (open_clip BPE text tokenizers only)."""
        if isinstance(self.text, SubsetTokenizer):
            text: dict[str, Any] = {"kind": "bpe_subset", "tokens": list(self.text.tokens)}
        elif isinstance(self.text, ClipTokenizer):
            text = {"kind": "bpe"}
        else:
            raise ValueError(
                f"cannot save a GatoTokenizer over a {type(self.text).__name__}: only open_clip's BPE and its "
                "subsets (SubsetTokenizer) can be rebuilt from a file"
            )
        layout = {"text_vocab_size": self.text_vocab_size, "num_bins": self.num_bins, "mu": self.mu, "m": self.m}
        return {"text": text, **layout, "patch_size": self.patch_size}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> GatoTokenizer:
        try:
            text, kind = state["text"], state["text"]["kind"]
            layout = {k: state[k] for k in ("text_vocab_size", "num_bins", "mu", "m", "patch_size")}
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a saved GatoTokenizer: it lacks {e}") from None
        if kind == "bpe":
            return cls(ClipTokenizer(), **layout)
        if kind == "bpe_subset":
            return cls(SubsetTokenizer(text["tokens"]), **layout)
        raise ValueError(f"unknown text tokenizer kind {kind!r} (known: bpe, bpe_subset)")

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as JSON, through a temporary file and a rename (never half-written)."""
        atomic_write_json(path, self.to_dict(), indent=1, fsync=True)

    @classmethod
    def load(cls, path: str | Path) -> GatoTokenizer:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (ValueError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: {e}") from None

    def __repr__(self) -> str:
        return (
            f"GatoTokenizer(text={self.text!r}, text_vocab_size={self.text_vocab_size}, num_bins={self.num_bins}, "
            f"mu={self.mu}, M={self.m}, patch_size={self.patch_size})"
        )


def collate_tokens(batch: Sequence[GatoTokens], *, pad_to: int | None = None) -> dict[str, Tensor]:
    """Right-pad sequences to one length: a dict of (B, T) tensors, patches (B, P, C, p, p) and ``padding_mask``.

    Padding tokens have modality TEXT, id 0, loss mask False; ``padding_mask`` is True on real tokens.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    length = max(len(t) for t in batch) if pad_to is None else pad_to
    if any(len(t) > length for t in batch):
        raise ValueError(f"a sequence of {max(len(t) for t in batch)} tokens does not fit pad_to={length}")
    num_patches = max(max(t.patches.shape[0] for t in batch), 1)
    patch_shape = next((t.patches.shape[1:] for t in batch if t.patches.shape[0]), batch[0].patches.shape[1:])
    out = {
        "tokens": torch.zeros(len(batch), length, dtype=torch.long),
        "modality": torch.full((len(batch), length), int(Modality.TEXT), dtype=torch.long),
        "local_position": torch.full((len(batch), length), -1, dtype=torch.long),
        "loss_mask": torch.zeros(len(batch), length, dtype=torch.bool),
        "timestep": torch.zeros(len(batch), length, dtype=torch.long),
        "padding_mask": torch.zeros(len(batch), length, dtype=torch.bool),
        "patches": torch.zeros(len(batch), num_patches, *patch_shape),
        "patch_position": torch.zeros(len(batch), num_patches, 2, dtype=torch.long),
    }
    for i, t in enumerate(batch):
        n, p = len(t), t.patches.shape[0]
        for name in ("tokens", "modality", "local_position", "loss_mask", "timestep"):
            out[name][i, :n] = getattr(t, name)
        out["padding_mask"][i, :n] = True
        out["patches"][i, :p] = t.patches
        out["patch_position"][i, :p] = t.patch_position
    return out
