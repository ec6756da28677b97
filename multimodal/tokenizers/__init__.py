"""Tokenizers: CLIP's BPE text tokenizer (open_clip's, with the vocabulary shipped inside its wheel) and its
corpus-sized subset."""

from .text import ClipTokenizer, SubsetTokenizer, check_prompts

__all__ = ["ClipTokenizer", "SubsetTokenizer", "check_prompts"]
