"""The GATO tokenizer pinned to the paper's formulas, orderings and loss mask."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from multimodal.tokenizers import ClipTokenizer, SubsetTokenizer
from multimodal.tokenizers.gato import (
    Continuous,
    Discrete,
    GatoTokenizer,
    GatoTokens,
    Image,
    Modality,
    bins_to_continuous,
    collate_tokens,
    continuous_to_bins,
    image_to_patches,
    inverse_mu_law,
    mu_law,
)


class WordTokenizer:
    """A tiny stand-in text tokenizer: one id per known word, end-of-text last (pluggable, as the issue asks)."""

    words = ("a", "red", "circle", "go", "left")

    @property
    def vocab_size(self) -> int:
        return len(self.words) + 1

    @property
    def eot_token_id(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        return [self.words.index(w) for w in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.words[i] for i in ids)


@pytest.fixture(scope="module")
def paper() -> GatoTokenizer:
    """The paper's layout: V = 32,000 text tokens."""
    return GatoTokenizer(WordTokenizer(), text_vocab_size=32000)


@pytest.mark.parametrize(
    ("value", "token"),
    [(0.0, 32512), (1.0, 32744), (-1.0, 32279), (10.0, 32860), (256.0, 33023), (-256.0, 32000)],
)
def test_continuous_tokens_match_the_paper_formula(paper: GatoTokenizer, value: float, token: int) -> None:
    assert paper.encode_continuous(torch.tensor([value])).tolist() == [token]
    # The same figure from the formula written out by hand.
    f = math.copysign(math.log(abs(value) * 100 + 1) / math.log(256 * 100 + 1), value)
    assert 32000 + min(math.floor((max(min(f, 1.0), -1.0) + 1) / 2 * 1024), 1023) == token


def test_mu_law_of_one_lands_in_bin_1023_not_1024() -> None:
    assert mu_law(torch.tensor([256.0])).item() == pytest.approx(1.0)
    assert continuous_to_bins(torch.tensor([256.0, 1e6, -1e6])).tolist() == [1023, 1023, 0]
    # Exactly F = 1 (the clipped upper end) is bin 1023.
    assert continuous_to_bins(inverse_mu_law(torch.tensor([1.0], dtype=torch.float64))).tolist() == [1023]


def test_decode_then_encode_is_the_identity_on_bin_ids(paper: GatoTokenizer) -> None:
    ids = torch.arange(32000, 33024)
    assert torch.equal(paper.encode_continuous(paper.decode_continuous(ids)), ids)
    bins = torch.arange(1024)
    assert torch.equal(continuous_to_bins(bins_to_continuous(bins)), bins)


def test_decoding_returns_the_bin_centre_close_to_the_value() -> None:
    x = torch.linspace(-5, 5, 101)
    back = bins_to_continuous(continuous_to_bins(x))
    # A bin is 2/1024 wide in mu-law space; near |x| = 5 that is about 0.1 in x.
    assert (back - x).abs().max() < 0.06
    assert bins_to_continuous(torch.tensor([512])).item() == pytest.approx(inverse_mu_law(torch.tensor(1 / 1024)))


def test_non_finite_and_out_of_range_values_raise(paper: GatoTokenizer) -> None:
    with pytest.raises(ValueError, match="finite"):
        paper.encode_continuous(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match=r"\[0, 1024\)"):
        paper.encode_discrete(np.array([3, 1024]))
    with pytest.raises(ValueError, match="integers"):
        paper.encode_discrete(np.array([0.5]))
    with pytest.raises(ValueError, match=r"\[0, 1024\)"):
        bins_to_continuous(torch.tensor([1024]))


def test_image_patches_are_raster_order_and_normalised() -> None:
    image = torch.zeros(3, 32, 48, dtype=torch.uint8)
    for r in range(2):
        for c in range(3):
            image[:, r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16] = 10 * (r * 3 + c)  # patch k has value 10 k
    image[0, 0, 0] = 255
    patches, grid = image_to_patches(image)
    assert patches.shape == (6, 3, 16, 16)
    assert grid.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    for k in range(6):
        expected = (10 * k / 255 * 2 - 1) / 4  # [-1, 1], then / sqrt(16)
        assert patches[k, 1].unique().tolist() == pytest.approx([expected])
    assert patches[0, 0, 0, 0].item() == pytest.approx(1 / 4)  # 255 -> 1 -> 1/4
    assert patches.min() >= -0.25 and patches.max() <= 0.25
    # Floats in [0, 1] give the same numbers as uint8 / 255.
    assert torch.allclose(image_to_patches(image.float() / 255)[0], patches)


def test_bad_images_raise() -> None:
    with pytest.raises(ValueError, match="multiple of the 16-pixel patch"):
        image_to_patches(torch.zeros(3, 20, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        image_to_patches(torch.full((3, 16, 16), 2.0))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        image_to_patches(torch.zeros(16, 16))


def test_hand_built_observation_orders_tokens_and_masks_the_loss(paper: GatoTokenizer) -> None:
    """An image, a nested dict of vectors, a text and a discrete action, checked token by token."""
    image = torch.randint(0, 256, (3, 32, 16), dtype=torch.uint8)  # 2 patches, one above the other
    observation = {
        "z_text": "go left",
        "image": Image(image),
        "state": {"velocity": np.array([[1.0, -1.0]]), "position": np.array([0.0, 10.0, 256.0])},
        "buttons": np.array([[3, 1], [0, 2]]),  # integers: discrete, row-major
    }
    seq = paper.encode_timestep(observation, np.array([7]), timestep=4)

    V = 32000
    # keys sorted: buttons, image, state.position, state.velocity, z_text; then '|', then the action.
    expected_tokens = [3, 1, 0, 2, 0, 1, 32512, 32860, 33023, 32744, 32279, 3, 4, 5, V + 1024, 7]
    expected_modality = (
        [Modality.DISCRETE] * 4 + [Modality.IMAGE] * 2 + [Modality.CONTINUOUS] * 5 + [Modality.TEXT] * 3
    ) + [Modality.SEPARATOR, Modality.DISCRETE]
    assert seq.tokens.tolist() == expected_tokens
    assert seq.modality.tolist() == [int(m) for m in expected_modality]
    assert seq.local_position.tolist() == [*range(14), -1, -1]
    # Loss only on the text (including its end-of-text) and on the action.
    assert seq.loss_mask.tolist() == [False] * 11 + [True] * 3 + [False, True]
    assert seq.timestep.tolist() == [4] * 16
    # The image tokens point at their patches, which are the normalised pixels in raster order.
    assert torch.equal(seq.patches, image_to_patches(image)[0])
    assert seq.patch_position.tolist() == [[0, 0], [1, 0]]
    assert paper.vocab_size == V + 1025 and paper.separator_id == V + 1024


def test_types_are_explicit_when_wrapped(paper: GatoTokenizer) -> None:
    seq = paper.encode_observation({"a": Continuous(np.array([1, 2])), "b": Discrete(np.array([1.0]).astype(int))})
    assert seq.modality.tolist() == [Modality.CONTINUOUS, Modality.CONTINUOUS, Modality.DISCRETE]
    with pytest.raises(ValueError, match="wrap it in Image"):
        paper.encode_observation({"a": object()})
    with pytest.raises(ValueError, match="keys must be strings"):
        paper.encode_observation({1: 2.0})
    with pytest.raises(ValueError, match="cannot hold an image"):
        paper.encode_action(Image(torch.zeros(3, 16, 16)))


def test_episode_is_timesteps_in_order_and_slices_keep_their_patches(paper: GatoTokenizer) -> None:
    images = [torch.full((3, 16, 32), 40 * t, dtype=torch.uint8) for t in range(3)]
    observations = [{"image": Image(im), "x": np.array([float(t)])} for t, im in enumerate(images)]
    actions = [np.array([t]) for t in range(3)]
    episode = paper.encode_episode(observations, actions)
    assert len(episode) == 3 * (2 + 1 + 1 + 1)
    assert episode.timestep.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert episode.tokens[episode.modality == Modality.IMAGE].tolist() == [0, 1, 2, 3, 4, 5]
    assert episode.tokens[episode.modality == Modality.DISCRETE].tolist() == [0, 1, 2]
    tail = episode.slice(5, 15)  # the last two timesteps
    assert tail.tokens[tail.modality == Modality.IMAGE].tolist() == [0, 1, 2, 3]
    assert torch.equal(tail.patches, torch.cat([image_to_patches(im)[0] for im in images[1:]]))
    with pytest.raises(ValueError, match="pair one to one"):
        paper.encode_episode(observations, actions[:2])


def test_text_round_trips_through_the_clip_bpe_and_sits_below_the_continuous_range() -> None:
    tok = GatoTokenizer()  # open_clip's BPE: V = 49,408
    assert tok.continuous_offset == ClipTokenizer().vocab_size == 49408
    seq = tok.encode_caption(torch.zeros(3, 64, 64, dtype=torch.uint8), "a red circle in the top left")
    text = seq.tokens[seq.modality == Modality.TEXT]
    assert text.max() < tok.continuous_offset and text[-1] == tok.eot_token_id
    assert tok.decode_text(text) == "a red circle in the top left"
    assert seq.loss_mask.sum() == len(text) and (seq.modality == Modality.IMAGE).sum() == 16
    assert tok.action_range("continuous") == (49408, 50432) and tok.action_range("discrete", 2) == (0, 2)
    with pytest.raises(ValueError, match="smaller than the text tokenizer"):
        GatoTokenizer(text_vocab_size=32000)


def test_a_subset_text_vocabulary_saves_and_loads_with_the_same_ids(tmp_path) -> None:
    text = SubsetTokenizer.from_texts(["a red circle", "a blue square"])
    tok = GatoTokenizer(text, text_vocab_size=1024)
    assert tok.vocab_size == 1024 + 1024 + 1 and tok.continuous_offset == 1024
    seq = tok.encode_timestep({"caption": "a blue circle", "x": np.array([0.5])}, np.array([3]))
    assert seq.tokens.tolist()[:4] == [*text.encode("a blue circle"), text.eot_token_id]
    tok.save(tmp_path / "gato_tokenizer.json")
    back = GatoTokenizer.load(tmp_path / "gato_tokenizer.json")
    assert repr(back) == repr(tok) and torch.equal(
        back.encode_timestep({"caption": "a blue circle", "x": np.array([0.5])}, np.array([3])).tokens, seq.tokens
    )
    assert not list(tmp_path.glob(".*.tmp"))  # written through a rename
    (tmp_path / "bad.json").write_text('{"text": {"kind": "bpe"}, "text_vocab_size": 1024}')
    with pytest.raises(ValueError, match=r"bad\.json: not a saved GatoTokenizer: it lacks 'num_bins'"):
        GatoTokenizer.load(tmp_path / "bad.json")
    state = {**tok.to_dict(), "text": {"kind": "sentencepiece"}}
    with pytest.raises(ValueError, match="unknown text tokenizer kind 'sentencepiece'"):
        GatoTokenizer.from_dict(state)
    with pytest.raises(ValueError, match="cannot save a GatoTokenizer over a WordTokenizer"):
        GatoTokenizer(WordTokenizer(), text_vocab_size=32000).save(tmp_path / "words.json")


def test_collate_pads_right_and_masks_padding(paper: GatoTokenizer) -> None:
    a = paper.encode_timestep({"x": np.array([1.0, 2.0])}, np.array([1]))
    b = paper.encode_caption(torch.zeros(3, 16, 32, dtype=torch.uint8), "a red circle")
    batch = collate_tokens([a, b])
    assert batch["tokens"].shape == (2, 6) and batch["patches"].shape == (2, 2, 3, 16, 16)
    assert batch["padding_mask"].tolist() == [[True] * 4 + [False] * 2, [True] * 6]
    assert not batch["loss_mask"][0, 4:].any()
    assert torch.equal(batch["tokens"][1], b.tokens)
    with pytest.raises(ValueError, match="does not fit"):
        collate_tokens([b], pad_to=3)
    assert isinstance(GatoTokens.concat([a, b]), GatoTokens)


@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_vectorised_arrays_equal_the_episode_tokens(paper: GatoTokenizer, kind: str) -> None:
    rng = np.random.default_rng(0)
    observations = rng.normal(size=(5, 3)).astype(np.float32) * 4
    actions = rng.integers(0, 2, size=(5, 1)) if kind == "discrete" else rng.normal(size=(5, 2)).astype(np.float32)
    fast = paper.encode_arrays(observations, actions, first_timestep=2)
    slow = paper.encode_episode(list(observations), list(actions))
    for name in ("tokens", "modality", "local_position", "loss_mask"):
        assert torch.equal(getattr(fast, name), getattr(slow, name)), name
    assert torch.equal(fast.timestep, slow.timestep + 2)
    # Without the last action: the sequence a policy reads, ending at the separator.
    open_ended = paper.encode_arrays(observations, actions[:-1])
    expected = GatoTokens.concat(
        [
            paper.encode_episode(list(observations[:-1]), list(actions[:-1])),
            paper.encode_timestep(observations[-1], timestep=4),
        ]
    )
    assert torch.equal(open_ended.tokens, expected.tokens) and open_ended.tokens[-1] == paper.separator_id
    assert torch.equal(open_ended.local_position, expected.local_position)
    with pytest.raises(ValueError, match=r"\(T - 1, m\)"):
        paper.encode_arrays(observations, actions[:-2])


def test_image_observations_become_patches_of_the_resized_view(paper: GatoTokenizer) -> None:
    """(T, 56, 56, 3) uint8 frames (MiniGrid's view): each resized to 48 px by area averaging, 9 patches, then '|'
    and the action; the same as encoding each timestep by hand."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 56, 56, 3), dtype=np.uint8)
    actions = np.array([[2], [0], [5]])
    fast = paper.encode_arrays(frames, actions)
    assert len(fast) == 3 * (9 + 1 + 1) and fast.patches.shape == (27, 3, 16, 16)
    resized = torch.nn.functional.interpolate(
        torch.as_tensor(frames).permute(0, 3, 1, 2).float() / 255, size=(48, 48), mode="area"
    )
    slow = paper.encode_episode([{"image": Image(f)} for f in resized], [Discrete(a) for a in actions])
    for name in ("tokens", "modality", "local_position", "loss_mask", "timestep", "patches", "patch_position"):
        assert torch.equal(getattr(fast, name), getattr(slow, name)), name
    assert (fast.modality[fast.local_position >= 0] == Modality.IMAGE).all()
    open_ended = paper.encode_arrays(frames, actions[:-1])  # what the agent reads: ends at the last separator
    assert len(open_ended) == 3 * 11 - 1 and open_ended.tokens[-1] == paper.separator_id
    with pytest.raises(ValueError, match=r"image observations \(T, H, W, C\) uint8 need actions"):
        paper.encode_arrays(frames.astype(np.float32), actions)
    with pytest.raises(ValueError, match="smaller than one 16-px patch"):
        paper.encode_arrays(frames[:, :8, :8], actions)
