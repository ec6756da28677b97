"""Branch-Train-Merge: parameter averaging and the posterior-weighted ensemble of GATO branches."""

from __future__ import annotations

import copy

import pytest
import torch

from multimodal.models.btm import GatoEnsemble, average_branches

from .test_gato import sample_batch, tiny


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_averaging_identical_branches_is_the_identity() -> None:
    seed = tiny().eval()
    merged = average_branches([seed, copy.deepcopy(seed), copy.deepcopy(seed)])
    assert all(torch.equal(merged.state_dict()[k], v) for k, v in seed.state_dict().items())
    assert merged.cfg == seed.cfg


def test_averaging_is_the_weighted_mean_of_parameters() -> None:
    a, b = tiny().eval(), tiny().eval()
    merged = average_branches([a, b], [0.25, 0.75])
    for key, value in merged.state_dict().items():
        torch.testing.assert_close(value, 0.25 * a.state_dict()[key] + 0.75 * b.state_dict()[key])
    with pytest.raises(ValueError, match="summing to 1"):
        average_branches([a, b], [0.5, 0.6])
    with pytest.raises(ValueError, match="differ in architecture"):
        average_branches([a, tiny(depth=1)])


def test_ensemble_weights_are_a_posterior_summing_to_one() -> None:
    a, b, c = tiny().eval(), tiny().eval(), tiny().eval()
    batch = sample_batch()
    ensemble = GatoEnsemble([a, b, c])
    weights = ensemble.weights(batch)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))
    scores = torch.stack([m.context_log_likelihood(batch) for m in (a, b, c)], dim=1)
    torch.testing.assert_close(weights, scores.softmax(-1))
    prior = [0.6, 0.3, 0.1]
    torch.testing.assert_close(
        GatoEnsemble([a, b, c], prior).weights(batch), (scores + torch.tensor(prior).log()).softmax(-1)
    )


def test_ensemble_next_token_mixes_the_branches() -> None:
    a, b = tiny().eval(), tiny().eval()
    batch = sample_batch()
    token_range = (0, 6)
    assert torch.equal(
        GatoEnsemble([a, copy.deepcopy(a)]).next_token(batch, token_range), a.next_token(batch, token_range)
    )
    assert torch.equal(
        GatoEnsemble([a, b], [1.0, 0.0]).next_token(batch, token_range), a.next_token(batch, token_range)
    )
    weights = GatoEnsemble([a, b]).weights(batch)
    last = batch["padding_mask"].long().sum(1) - 1
    probs = [m.logits(m(batch)[torch.arange(2), last], token_range).softmax(-1) for m in (a, b)]
    mixed = weights[:, :1] * probs[0] + weights[:, 1:] * probs[1]
    assert torch.equal(GatoEnsemble([a, b]).next_token(batch, token_range), mixed.argmax(-1))


def test_ensemble_refuses_mismatched_branches() -> None:
    with pytest.raises(ValueError, match="differ in vocabulary, context or patch size"):
        GatoEnsemble([tiny(), tiny(context_length=32)])
    with pytest.raises(ValueError, match="summing to 1"):
        GatoEnsemble([tiny(), tiny()], [0.5, 0.2])
    with pytest.raises(ValueError, match="must be dense"):
        GatoEnsemble([tiny(mlp="demix", tasks=("a", "b"))])
