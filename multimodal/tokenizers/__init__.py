"""Tokenizers: CLIP's BPE text tokenizer (open_clip's, with the vocabulary shipped inside its wheel)."""

from .text import ClipTokenizer

__all__ = ["ClipTokenizer"]
