"""GATO model: embeddings where the paper puts them, a causal masked loss, and a small task it learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from multimodal import create_model, list_models
from multimodal.models.gato import Gato, GatoConfig
from multimodal.tokenizers.gato import GatoTokenizer, Image, Modality, collate_tokens


class Words:
    """A 6-word text tokenizer; the GATO tokenizer pads its vocabulary to 1,024 (the discrete range)."""

    words = ("a", "red", "blue", "circle", "square")

    vocab_size = 6
    eot_token_id = 5

    def encode(self, text: str) -> list[int]:
        return [self.words.index(w) for w in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.words[i] for i in ids)


TOK = GatoTokenizer(Words(), text_vocab_size=1024)


def tiny(**overrides) -> Gato:
    cfg = GatoConfig(
        text_vocab_size=1024, dim=32, depth=2, heads=2, context_length=64, patch_channels=8, patch_groups=4
    )
    return Gato(cfg.replace(**overrides))


def sample_batch() -> dict[str, torch.Tensor]:
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    caption = TOK.encode_observation({"image": Image(image), "text": "a red circle"})
    control = TOK.encode_episode([np.array([0.5, -2.0]), np.array([1.0, 3.0])], [np.array([1]), np.array([0])])
    return collate_tokens([caption, control])


def test_registered_presets_build() -> None:
    assert {"gato_nano", "gato_small"} <= set(list_models("gato_*"))
    model = create_model("gato_nano", depth=1)
    assert model.vocab_size == 49408 + 1024 + 1 and len(model.transformer.blocks) == 1


def test_embeddings_put_patches_tokens_and_positions_where_the_paper_does() -> None:
    torch.manual_seed(0)
    model = tiny(pos_embed="none").eval()
    batch = sample_batch()
    x = model.embed(batch)
    patches = model.patch_embed(batch["patches"][0])  # (4, dim)
    rows, cols = batch["patch_position"][0].unbind(-1)
    for t in range(4):  # the image's four patches, raster order, each with its row/col and local position
        expected = patches[t] + model.patch_row(rows[t]) + model.patch_col(cols[t]) + model.local_embed.weight[t]
        torch.testing.assert_close(x[0, t], expected)
    # Text tokens: the shared table plus their local position (after the 4 patches).
    assert batch["modality"][0, 4].item() == Modality.TEXT
    torch.testing.assert_close(x[0, 4], model.token_embed.weight[0] + model.local_embed.weight[4])
    # Control: the separator and the action share one learned position vector; observations get their index.
    seq = batch["tokens"][1]
    assert seq[:4].tolist()[2] == TOK.separator_id and batch["local_position"][1, :4].tolist() == [0, 1, -1, -1]
    torch.testing.assert_close(x[1, 2], model.token_embed.weight[TOK.separator_id] + model.action_position)
    torch.testing.assert_close(x[1, 3], model.token_embed.weight[1] + model.action_position)
    torch.testing.assert_close(x[1, 1], model.token_embed.weight[seq[1]] + model.local_embed.weight[1])


def test_attention_is_causal_and_padding_changes_nothing() -> None:
    torch.manual_seed(0)
    model = tiny().eval()
    batch = sample_batch()
    hidden = model(batch)
    changed = {k: v.clone() for k, v in batch.items()}
    changed["tokens"][1, 5] = 7  # a later token of the control sequence
    torch.testing.assert_close(model(changed)[1, :5], hidden[1, :5])
    assert not torch.allclose(model(changed)[1, 5], hidden[1, 5])
    # The control sequence alone (no padding) gives the same states as inside the padded batch.
    alone = {k: v[1:2, : int(batch["padding_mask"][1].sum())] for k, v in batch.items() if k not in ("patches",)}
    alone["patches"], alone["patch_position"] = batch["patches"][1:2], batch["patch_position"][1:2]
    n = alone["tokens"].shape[1]
    torch.testing.assert_close(model(alone)[0], hidden[1, :n], atol=1e-5, rtol=1e-5)


def test_loss_is_cross_entropy_on_text_and_action_targets_only() -> None:
    torch.manual_seed(0)
    model = tiny().eval()
    batch = sample_batch()
    loss, logs = model.loss(batch)
    hidden = model(batch)
    terms = []
    for b in range(2):
        for t in range(batch["tokens"].shape[1] - 1):
            if batch["loss_mask"][b, t + 1]:
                logits = hidden[b, t] @ model.token_embed.weight.T
                terms.append(F.cross_entropy(logits[None], batch["tokens"][b, t + 1][None]))
    # 4 text targets (a red circle eot) + 2 actions; observations, separators and padding never are.
    assert len(terms) == 6
    torch.testing.assert_close(loss, torch.stack(terms).mean())
    assert set(logs) == {"loss", "text_loss", "text_acc", "action_loss", "action_acc"}
    no_targets = {k: v.clone() for k, v in batch.items()}
    no_targets["loss_mask"][:] = False
    with pytest.raises(ValueError, match="no text or action"):
        model.loss(no_targets)


def test_learns_a_control_rule_and_decodes_within_the_action_range() -> None:
    """Observation x -> action (x > 0): the loss falls and greedy decoding restricted to {0, 1} is right."""
    torch.manual_seed(0)
    model = tiny()
    rng = np.random.default_rng(0)

    seqs, answers = [], []
    for _ in range(576):
        xs = rng.normal(size=4)
        acts = [int(x > 0) for x in xs]
        seqs.append(TOK.encode_episode([np.array([x]) for x in xs], [np.array([a]) for a in acts]))
        answers.append(acts[-1])
    pool, answers = collate_tokens(seqs), torch.tensor(answers)  # 512 to train on, 64 held out

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(120):
        index = torch.randint(0, 512, (32,))
        loss, _ = model.loss({k: v[index] for k, v in pool.items()})
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.1 * np.mean(losses[:10])
    model.eval()
    # The held-out sequences without their last action: the model must decode it.
    prompt = {k: v[512:, :-1] if k not in ("patches", "patch_position") else v[512:] for k, v in pool.items()}
    actions = model.next_token(prompt, TOK.action_range("discrete", 2))
    assert actions.min() >= 0 and actions.max() <= 1
    assert (actions == answers[512:]).float().mean() >= 0.95
    with pytest.raises(ValueError, match="token_range"):
        model.next_token(prompt, (0, model.vocab_size + 1))


def test_bad_inputs_raise() -> None:
    model = tiny(context_length=6)
    with pytest.raises(ValueError, match="context_length=6"):
        model(sample_batch())
    with pytest.raises(ValueError, match="divisible"):
        GatoConfig(patch_channels=10, patch_groups=4)
