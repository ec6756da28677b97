"""GATO agent and captioner: the sequences they read match training's layout; captions are judged strictly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multimodal.data.control import ENVS, Episode, expert_policy, run_episodes
from multimodal.models.gato import Gato, GatoConfig
from multimodal.pipelines.gato import GatoAgent, caption_images, control_layout, judge_caption, named_pairs
from multimodal.tokenizers.gato import GatoTokenizer, Modality

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")


class Words:
    words = ("a", "red", "blue", "circle", "square", "and")
    vocab_size = 7
    eot_token_id = 6

    def encode(self, text: str) -> list[int]:
        return [self.words.index(w) for w in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.words[i] for i in ids)


TOK = GatoTokenizer(Words(), text_vocab_size=1024)


class Recorder(Gato):
    """A real (tiny) GATO whose next_token is replaced: it records what it read and answers ``answer``."""

    def __init__(self, context_length: int, answer) -> None:
        super().__init__(GatoConfig(text_vocab_size=1024, dim=16, depth=1, heads=2, context_length=context_length,
                                    patch_channels=8, patch_groups=4))  # fmt: skip
        self.seen: list[dict[str, torch.Tensor]] = []
        self.answer = answer

    def next_token(self, batch, token_range, **kwargs):
        self.seen.append({k: v.clone() for k, v in batch.items()})
        return self.answer(batch, token_range)


def test_control_layout_gives_the_prompt_half_the_context() -> None:
    assert control_layout(ENVS["CartPole-v1"], 96) == (6, 8)
    assert control_layout(ENVS["Pendulum-v1"], 256) == (5, 25)
    assert control_layout(ENVS["CartPole-v1"], 12) == (6, 1)
    with pytest.raises(ValueError, match="context_length to at least 12"):
        control_layout(ENVS["CartPole-v1"], 11)


def test_agent_reads_prompt_then_latest_timesteps_and_decodes_in_the_action_range() -> None:
    spec = ENVS["CartPole-v1"]
    rng = np.random.default_rng(0)
    demo = Episode(
        observations=rng.normal(size=(30, 4)).astype(np.float32),
        actions=rng.integers(0, 2, size=(30, 1)),
        rewards=np.ones(30, np.float32),
        seed=0,
    )
    model = Recorder(48, lambda batch, r: torch.full((batch["tokens"].shape[0],), r[1] - 1))  # always action 1
    agent = GatoAgent(model, TOK, spec, demo)
    policy = agent.policy()
    history = []
    for _ in range(6):
        obs = rng.normal(size=(2, 4)).astype(np.float32)
        actions = policy(obs, np.array([0, 1]))
        assert actions.dtype == np.int64 and actions.tolist() == [[1], [1]]
        history.append(obs)
    # Context 48: a prompt of the demonstration's last 4 timesteps (24 tokens), then 4 timesteps of the episode,
    # the current one ending at its separator.
    seen = model.seen[-1]
    prompt = TOK.encode_arrays(demo.observations[-4:], demo.actions[-4:])
    window = TOK.encode_arrays(np.stack([h[1] for h in history[-4:]]), np.ones((3, 1), np.int64))
    assert torch.equal(seen["tokens"][1], torch.cat([prompt.tokens, window.tokens]))
    assert seen["tokens"].shape[1] == 24 + 4 * 6 - 1 and seen["tokens"][1, -1] == TOK.separator_id
    assert seen["modality"][1, -1] == Modality.SEPARATOR
    assert model.seen[0]["tokens"].shape[1] == 24 + 5  # first step: the prompt and one observation


def test_continuous_agent_returns_bin_centres_within_bounds() -> None:
    spec = ENVS["Pendulum-v1"]
    model = Recorder(64, lambda batch, r: torch.full((batch["tokens"].shape[0],), r[0] + 700))
    agent = GatoAgent(model, TOK, spec, None)
    actions = agent.policy()(np.zeros((3, 3), np.float32), np.arange(3))
    assert actions.dtype == np.float32 and actions.shape == (3, 1)
    assert actions[0, 0] == pytest.approx(TOK.decode_continuous(torch.tensor(TOK.continuous_offset + 700)).item())
    assert model.seen[0]["tokens"].shape[1] == 4  # no prompt: the observation and the separator


def test_agent_with_a_perfect_model_is_the_expert() -> None:
    """A model that answers the expert's action from the observation it read plays CartPole to 500."""
    spec = ENVS["CartPole-v1"]
    expert = expert_policy("CartPole-v1")

    def answer(batch, token_range):
        obs_ids = batch["tokens"][:, -5:-1] - TOK.continuous_offset  # the current observation's 4 bins
        obs = TOK.decode_continuous(obs_ids + TOK.continuous_offset).numpy()
        return torch.as_tensor(expert(obs, None)[:, 0])

    agent = GatoAgent(Recorder(48, answer), TOK, spec, None)
    episodes = run_episodes("CartPole-v1", agent.policy(), [1_000_000, 1_000_001])
    assert [e.total_return for e in episodes] == [500.0, 500.0]


def test_named_pairs_and_the_judge() -> None:
    objects = [("red", "circle"), ("blue", "square")]
    assert named_pairs("a large red circle above a small blue square", COLOURS, SHAPES) == set(objects)
    assert judge_caption("a red circle", objects, COLOURS, SHAPES)
    assert judge_caption("a small blue square and a large red circle", objects, COLOURS, SHAPES)
    assert not judge_caption("a blue square", objects, COLOURS, SHAPES)  # not the main object
    assert not judge_caption("a red circle and a green star", objects, COLOURS, SHAPES)  # a pair not there
    assert not judge_caption("a red square", objects, COLOURS, SHAPES)
    assert not judge_caption("a circle", objects, COLOURS, SHAPES)
    assert not judge_caption("", objects, COLOURS, SHAPES)


def test_captioning_stops_at_end_of_text() -> None:
    words = iter([1, 3, 6])  # "red circle" then end-of-text

    def answer(batch, token_range):
        assert token_range == (0, 7)  # the text tokenizer's 7 ids, not the unused ones up to V = 1024
        return torch.full((batch["tokens"].shape[0],), next(words))

    model = Recorder(64, answer)
    captions = caption_images(model, TOK, torch.rand(2, 3, 32, 32))
    assert captions == ["red circle", "red circle"]
    last = model.seen[-1]
    assert last["tokens"].shape[1] == 4 + 2 and last["local_position"][0].tolist() == list(range(6))
