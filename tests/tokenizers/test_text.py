"""multimodal.tokenizers.text: ClipTokenizer equals open_clip's tokenizer, offline; SubsetTokenizer renumbers the
tokens a corpus uses."""

from __future__ import annotations

import pickle

import open_clip
import pytest
import torch

from multimodal.tokenizers import ClipTokenizer, SubsetTokenizer

TEXTS = [
    "a photo of a cat",
    "A RED circle above a blue square!",
    "naïve café — déjà vu, 3.14 (x2) don't",
    "",
    "  many   spaces\tand\nnewlines  ",
    " ".join(f"word{i}" for i in range(200)),  # far longer than any context
]


pytestmark = pytest.mark.usefixtures("offline")


@pytest.mark.parametrize("context_length", [77, 16])
def test_equals_open_clip_tokenize(context_length: int) -> None:
    tokenizer = ClipTokenizer(context_length)
    tokens = tokenizer(TEXTS)
    assert tokens.dtype == torch.long and tokens.shape == (len(TEXTS), context_length)
    assert torch.equal(tokens, open_clip.tokenize(TEXTS, context_length=context_length))
    assert torch.equal(tokens, open_clip.get_tokenizer("ViT-B-32", context_length=context_length)(TEXTS))
    assert torch.equal(tokenizer(TEXTS[0]), tokens[:1])


def test_layout_sot_tokens_eot_padding_and_truncation() -> None:
    tokenizer = ClipTokenizer(16)
    assert (tokenizer.vocab_size, tokenizer.sot_token_id, tokenizer.eot_token_id) == (49408, 49406, 49407)
    short, empty, long = tokenizer(["a red circle", "", TEXTS[-1]])
    assert short[:5].tolist() == [49406, 320, 736, 7117, 49407] and short[5:].eq(0).all()
    assert empty[:2].tolist() == [49406, 49407] and empty[2:].eq(0).all()
    assert long[0] == 49406 and long[-1] == 49407 and (long[1:-1] < 49406).all()  # truncated, eot kept last
    assert (tokenizer(TEXTS).argmax(dim=-1) == (tokenizer(TEXTS) == 49407).int().argmax(dim=-1)).all()
    assert tokenizer.encode("a red circle") == [320, 736, 7117]
    assert tokenizer.decode(short) == "a red circle"


def test_pickles_small_and_checks_input() -> None:
    tokenizer = ClipTokenizer(32)
    blob = pickle.dumps(tokenizer)
    assert len(blob) < 200
    assert torch.equal(pickle.loads(blob)(TEXTS), tokenizer(TEXTS))
    with pytest.raises(ValueError, match="context_length must be an int >= 2"):
        ClipTokenizer(1)
    with pytest.raises(ValueError, match="expected a string or a list of strings"):
        tokenizer(["ok", 3])


CAPTIONS = ["a red circle in the top left.", "A small blue square next to an orange cross", "the green star"]


def test_subset_tokenizer_renumbers_the_corpus_tokens_and_decodes_like_the_whole_bpe() -> None:
    whole = ClipTokenizer()
    subset = SubsetTokenizer.from_texts(CAPTIONS)
    bpe_ids = sorted({i for t in CAPTIONS for i in whole.encode(t)} | {whole.eot_token_id})
    assert subset.vocab_size == len(bpe_ids) and subset.eot_token_id == len(bpe_ids) - 1  # eot has the top BPE id
    assert SubsetTokenizer.from_texts(reversed(CAPTIONS)).tokens == subset.tokens  # order-free
    for text in CAPTIONS:
        ids = subset.encode(text)
        assert ids == [bpe_ids.index(i) for i in whole.encode(text)]
        assert subset.decode([*ids, subset.eot_token_id]) == whole.decode(whole.encode(text))
    assert SubsetTokenizer(subset.tokens).encode(CAPTIONS[0]) == subset.encode(CAPTIONS[0])  # rebuilt from tokens
    assert pickle.loads(pickle.dumps(subset)).encode(CAPTIONS[1]) == subset.encode(CAPTIONS[1])


def test_subset_tokenizer_refuses_what_it_cannot_represent() -> None:
    subset = SubsetTokenizer.from_texts(CAPTIONS)
    with pytest.raises(ValueError, match="'purple</w>', which is not in this tokenizer's"):
        subset.encode("a purple circle")
    with pytest.raises(ValueError, match="outside this tokenizer's"):
        subset.decode([subset.vocab_size])
    eot = subset.tokens[subset.eot_token_id]
    with pytest.raises(ValueError, match=r"1 tokens are not in open_clip's BPE vocabulary, e.g. 'notatoken'"):
        SubsetTokenizer([eot, "notatoken"])
    with pytest.raises(ValueError, match="end-of-text"):
        SubsetTokenizer(["red</w>"])
    with pytest.raises(ValueError, match="twice"):
        SubsetTokenizer(["red</w>", "red</w>", eot])
