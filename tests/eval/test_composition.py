"""multimodal.evaluation.composition and eval.composition: where an unCLIP stack fails to compose."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from eval.composition import format_table
from multimodal.data.shapes import ShapesSpec, write_shapes_card
from multimodal.evaluation import Judge, diagnose_composition, prompt_set
from multimodal.evaluation.composition import _leave_one_out_classes, class_images, verdict
from tests.eval.test_generation import Always
from tests.pipelines.test_unclip import tiny_pipeline


@pytest.fixture(scope="module")
def every_pair(tmp_path_factory) -> str:
    """A shapes card with at least two test images of every seen pair and of every held-out one."""
    spec = ShapesSpec(seed=2, image_size=32, train=48, test=480, heldout=48, samples_per_shard=240)
    return str(write_shapes_card(tmp_path_factory.mktemp("every-pair"), spec, "every-pair"))


def test_class_images_takes_the_first_of_each_class_and_refuses_a_short_class(every_pair):
    _, held = prompt_set(every_pair)
    classes = [c for _, c in held]
    images, labels = class_images(every_pair, "heldout", classes, 2, 16)
    assert images.shape == (12, 3, 16, 16) and labels.tolist() == [c for c in classes for _ in range(2)]
    assert images.min() >= -1 and images.max() <= 1
    with pytest.raises(ValueError, match="fewer than 1000 images of classes"):
        class_images(every_pair, "heldout", classes, 1000, 16)


def test_leave_one_out_nearest_class_of_clustered_embeddings():
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(36, 16), dim=-1)
    labels = torch.arange(36).repeat_interleave(3)
    embeds = F.normalize(centres[labels] + 0.05 * torch.randn(108, 16), dim=-1)
    assert torch.equal(_leave_one_out_classes(embeds, labels, embeds, labels), labels)
    # a class of one image, left out, has no mean: the image goes to the nearest other class, not to itself
    lone = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6]])
    assert _leave_one_out_classes(lone[:1], torch.tensor([0]), lone, torch.tensor([0, 1, 1])).tolist() == [1]


def _result(decoder_seen: float, decoder_held: float, prior_seen: float, prior_held: float) -> dict:
    stages = lambda decoder, prior: {  # noqa: E731
        "decoder_from_real_embeddings": {"accuracy": decoder},
        "prior_nearest_class": {"accuracy": prior},
    }
    return {"seen": stages(decoder_seen, prior_seen), "heldout": stages(decoder_held, prior_held)}


def test_the_verdict_names_the_stage_under_half_its_seen_accuracy():
    assert verdict(_result(0.8, 0.6, 0.9, 0.1)) == (
        "fails to compose: the prior (0.100 on held-out pairs against 0.900 on seen ones)"
    )
    assert verdict(_result(0.8, 0.1, 0.9, 0.8)).startswith("fails to compose: the decoder (0.100")
    assert " and the prior " in verdict(_result(0.8, 0.1, 0.9, 0.1))
    assert verdict(_result(0.8, 0.4, 0.9, 0.45)).startswith("both stages compose")


def test_a_stack_is_diagnosed_on_seen_and_held_out_pairs(every_pair):
    seen, held = prompt_set(every_pair)
    judge = Judge(Always(0), image_size=8, mean=[0.5] * 3, std=[0.5] * 3)  # always "red circle", a seen pair
    results = diagnose_composition(tiny_pipeline(), judge, n=2, steps=2, dataset=every_pair, batch=16)
    for kind, prompts in (("seen", seen), ("heldout", held)):
        classes = [c for _, c in prompts]
        for key in ("decoder_from_real_embeddings", "real_images"):
            r = results[kind][key]
            assert r["n"] == 2 * len(classes)
            assert r["accuracy"] == pytest.approx(classes.count(0) / len(classes))
            assert r["color_accuracy"] == pytest.approx(sum(c // 6 == 0 for c in classes) / len(classes))
            assert r["shape_accuracy"] == pytest.approx(sum(c % 6 == 0 for c in classes) / len(classes))
        for key in ("prior_nearest_class", "real_embeddings_nearest_class"):
            r = results[kind][key]
            assert 0 <= r["accuracy"] <= 1 and -1 <= r["cosine_to_own_pair"] <= 1 and r["n"] == 2 * len(classes)
    assert results["verdict"] == verdict(results)
    table = format_table(results)
    assert len(table.splitlines()) == 2 + 8 + 2 and table.splitlines()[-1] == f"verdict: {results['verdict']}"
    json.dumps(results)  # JSON-ready
