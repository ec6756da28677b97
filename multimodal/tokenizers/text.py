"""CLIP's text tokenizer: open_clip's byte-pair encoder over OpenAI's 49,408-token vocabulary.

The vocabulary (``bpe_simple_vocab_16e6.txt.gz``) ships inside the open_clip wheel, so nothing is downloaded. Each
text becomes ``[sot, tokens..., eot, 0, 0, ...]`` of a fixed context length; a text too long is cut and its last
kept position set to ``eot``, exactly as ``open_clip.tokenize``.
"""

from __future__ import annotations

import functools
from pathlib import Path

from torch import Tensor

__all__ = ["ClipTokenizer"]


@functools.lru_cache(maxsize=1)
def _bpe():
    """One shared open_clip ``SimpleTokenizer`` per process (reading the merges takes a fraction of a second)."""
    from open_clip.tokenizer import SimpleTokenizer, default_bpe

    path = Path(default_bpe())
    if not path.is_file():
        raise FileNotFoundError(f"open_clip's BPE vocabulary is missing at {path}; reinstall open_clip_torch")
    return SimpleTokenizer(bpe_path=str(path))


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
        return _bpe()(list(texts), context_length=self.context_length)

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
