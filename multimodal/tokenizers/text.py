"""CLIP's text tokenizer: open_clip's byte-pair encoder over OpenAI's 49,408-token vocabulary.

The vocabulary (``bpe_simple_vocab_16e6.txt.gz``) ships inside the open_clip wheel, so nothing is downloaded. Each
text becomes ``[sot, tokens..., eot, 0, 0, ...]`` of a fixed context length; a text too long is cut and its last
kept position set to ``eot``, exactly as ``open_clip.tokenize``. Only the start of a long text is encoded (see
:func:`_encode_head`): byte-pair encoding takes time quadratic in a word's length, and a 10,000-letter "word" in a
scraped caption would otherwise hold a data-loader worker for seconds.

Prompts typed by a user go through :func:`check_prompts` (by way of :meth:`ClipTokenizer.encode_prompts`): an empty
or blank prompt, one holding control characters, or one the encoder reads nothing of is a ``ValueError`` naming it;
one longer than the context is cut with a warning that says what was dropped.

:class:`SubsetTokenizer` is the same byte-pair encoding restricted to the tokens a corpus uses, renumbered from 0: a
model over a closed corpus (templated captions) then needs a token table and an output projection of a few hundred
rows instead of 49,408.
"""

from __future__ import annotations

import functools
import unicodedata
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["ClipTokenizer", "SubsetTokenizer", "check_prompts"]


@functools.lru_cache(maxsize=1)
def _bpe():
    """One shared open_clip ``SimpleTokenizer`` per process (reading the merges takes a fraction of a second)."""
    from open_clip.tokenizer import SimpleTokenizer, default_bpe

    path = Path(default_bpe())
    if not path.is_file():
        raise FileNotFoundError(f"open_clip's BPE vocabulary is missing at {path}; reinstall open_clip_torch")
    return SimpleTokenizer(bpe_path=str(path))


def _encode_head(text: str, context_length: int) -> list[int]:
    """BPE ids of ``text``, or of a start of it long enough that the ids past it fall outside the context.

    A prefix of ``4 * context_length`` characters, doubled until it yields twice the context in ids. Merges are
    local, so cutting the text changes only ids near the cut, past the context: what the context keeps equals
    ``open_clip.tokenize`` of the whole text, at a cost bounded however long the text is.
    """
    size = 4 * context_length
    while size < len(text):
        ids = _bpe().encode(text[:size])
        if len(ids) >= 2 * context_length:
            return ids
        size *= 2
    return _bpe().encode(text)


def check_prompts(prompts: str | Sequence[str]) -> list[str]:
    """Text prompts from a user, as a list: a ``ValueError`` names the first that is not a string, is empty or only
    whitespace, holds a control character (or an undecodable byte) or has nothing the byte-pair encoder reads."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, Sequence) or not prompts:
        raise ValueError(f"no prompts given; pass at least one text prompt, e.g. 'a red circle' (got {prompts!r})")
    for i, text in enumerate(prompts, 1):
        if not isinstance(text, str):
            raise ValueError(f"prompt {i} is not a string: {text!r}")
        if not text.strip():
            what = "empty" if not text else f"only whitespace ({_shown(text)})"
            raise ValueError(f"prompt {i} is {what}; give it some words, e.g. 'a red circle'")
        bad = next(
            (j for j, ch in enumerate(text) if unicodedata.category(ch) in ("Cc", "Cs") and not ch.isspace()), None
        )
        if bad is not None:
            what = "an undecodable byte" if unicodedata.category(text[bad]) == "Cs" else "a control character"
            raise ValueError(f"prompt {i} ({_shown(text)}) holds {what}, {text[bad]!r}, at position {bad}; remove it")
        if not _encode_head(text, 1):
            raise ValueError(
                f"prompt {i} ({_shown(text)}) has no words the tokenizer reads; give it some, e.g. 'a red circle'"
            )
    return list(prompts)


def _shown(text: str, limit: int = 50) -> str:
    """``repr(text)`` cut to about ``limit`` characters: one line, control characters escaped."""
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[: limit - 4]}...{shown[-1]}"


class ClipTokenizer:
    """Texts to CLIP token ids (N, context_length), identical to ``open_clip.tokenize``.

    The object holds only its context length (the vocabulary is shared per process), so it pickles cheaply into
    data-loader workers.
    """

    pad_token_id = 0

    def __init__(self, context_length: int = 77) -> None:
        if not isinstance(context_length, int) or context_length < 2:
            raise ValueError(f"context_length must be an int >= 2 (room for sot and eot), got {context_length!r}")
        self.context_length = context_length

    @property
    def vocab_size(self) -> int:
        return _bpe().vocab_size

    @property
    def sot_token_id(self) -> int:
        return _bpe().sot_token_id

    @property
    def eot_token_id(self) -> int:
        return _bpe().eot_token_id

    def __call__(self, texts: str | list[str]) -> Tensor:
        """One text or a list of N texts -> LongTensor (N, context_length), zero-padded."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"expected a string or a list of strings, got {type(texts).__name__}")
        bpe, n = _bpe(), self.context_length
        out = torch.zeros(len(texts), n, dtype=torch.long)  # (N, context_length)
        for i, text in enumerate(texts):
            ids = [bpe.sot_token_id, *_encode_head(text, n), bpe.eot_token_id][:n]
            ids[-1] = bpe.eot_token_id  # a text cut short still ends with eot
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def encode_prompts(self, prompts: str | Sequence[str]) -> Tensor:
        """User prompts, checked by :func:`check_prompts`, -> LongTensor (N, context_length); a prompt longer than the
        context is cut as by ``__call__``, with a warning that names it and says what was dropped."""
        prompts = check_prompts(prompts)
        room = self.context_length - 2  # start and end take two positions
        for i, text in enumerate(prompts, 1):
            ids = _encode_head(text, self.context_length)
            if len(ids) > room:
                warnings.warn(
                    f"prompt {i} ({_shown(text)}) is longer than the {room} tokens the text encoder reads; "
                    f"it was cut before {_shown(_bpe().decode(ids[room:]).strip())}",
                    stacklevel=2,
                )
        return self(prompts)

    def encode(self, text: str) -> list[int]:
        """The BPE ids of ``text``, without start, end or padding."""
        return _bpe().encode(text)

    def decode(self, ids: Tensor | list[int]) -> str:
        """Token ids (one row) back to cleaned text, dropping start, end and padding tokens."""
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        special = {self.sot_token_id, self.eot_token_id, self.pad_token_id}
        return _bpe().decode([i for i in ids if i not in special]).strip()

    def __repr__(self) -> str:
        return f"ClipTokenizer(context_length={self.context_length})"


class SubsetTokenizer:
    """Open_clip's BPE over only ``tokens`` (BPE token strings such as ``"red</w>"``), renumbered 0..n-1 in order.

    A text encodes exactly as with the whole BPE, then each id maps to its place in ``tokens``; a text with a token
    outside the subset is an error (no silent unknown token). End-of-text must be one of the tokens. Build one from
    a corpus with :meth:`from_texts`; ``tokens`` is all it takes to rebuild it (e.g. from a run's saved tokenizer).
    """

    def __init__(self, tokens: Sequence[str]) -> None:
        bpe = _bpe()
        tokens = tuple(tokens)
        unknown = [t for t in tokens if t not in bpe.encoder]
        if unknown:
            raise ValueError(f"{len(unknown)} tokens are not in open_clip's BPE vocabulary, e.g. {unknown[0]!r}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("the subset names a token twice")
        eot = bpe.decoder[bpe.eot_token_id]
        if eot not in tokens:
            raise ValueError(f"the subset must hold the end-of-text token {eot!r}")
        self.tokens = tokens
        self._to_bpe = [bpe.encoder[t] for t in tokens]
        self._from_bpe = {bpe_id: i for i, bpe_id in enumerate(self._to_bpe)}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> SubsetTokenizer:
        """The subset of every BPE token in ``texts``, plus end-of-text, in BPE id order (so the same corpus in
        any order gives the same ids)."""
        bpe = _bpe()
        ids = {bpe.eot_token_id}
        for text in texts:
            ids.update(bpe.encode(text))
        return cls([bpe.decoder[i] for i in sorted(ids)])

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def eot_token_id(self) -> int:
        return self._from_bpe[_bpe().eot_token_id]

    def encode(self, text: str) -> list[int]:
        """The subset ids of ``text``, without start or end; raises on a token outside the subset."""
        ids = []
        for bpe_id in _bpe().encode(text):
            if bpe_id not in self._from_bpe:
                raise ValueError(
                    f"{text!r} holds the token {_bpe().decoder[bpe_id]!r}, which is not in this tokenizer's "
                    f"{self.vocab_size}-token subset (built from the training texts); train with a corpus that has it"
                )
            ids.append(self._from_bpe[bpe_id])
        return ids

    def decode(self, ids: Tensor | list[int]) -> str:
        """Subset ids back to cleaned text, dropping end-of-text."""
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"id {bad[0]} is outside this tokenizer's [0, {self.vocab_size}) subset")
        eot = self.eot_token_id
        return _bpe().decode([self._to_bpe[i] for i in ids if i != eot]).strip()

    def __repr__(self) -> str:
        return f"SubsetTokenizer({self.vocab_size} of open_clip's BPE tokens)"
