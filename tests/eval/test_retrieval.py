"""multimodal.evaluation.retrieval: recall@k by hand, with duplicate captions counted as positives, beside
CLIP_benchmark's own-captions-only recall; eval.retrieval over a CLIP_benchmark folder's several captions an image."""

from __future__ import annotations

import json

import pytest
import torch

from eval.retrieval import main
from multimodal import load_checkpoint
from multimodal.data import load_card
from multimodal.data.benchmark import export_benchmark
from multimodal.data.shards import read_shard
from multimodal.evaluation import recall_at_k, retrieval_evaluate
from multimodal.evaluation.retrieval import clip_benchmark_recalls
from multimodal.runs import get_tokenizer
from tests.test_load_transforms import write_clip_run


def test_recall_at_k_by_hand():
    sim = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.7, 0.6, 0.1]])
    positives = torch.eye(3, dtype=torch.bool)
    r = recall_at_k(sim, positives, ks=(1, 2, 5))
    # query 0: own item ranked 1st; query 1: 2nd; query 2: 3rd
    assert r == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 5: 1.0}
    positives[2, 1] = True  # item 1 has the same caption as item 2
    assert recall_at_k(sim, positives, ks=(2,))[2] == 1.0
    with pytest.raises(ValueError, match="at least one positive"):
        recall_at_k(sim, torch.zeros(3, 3, dtype=torch.bool))


def test_clip_benchmark_recalls_count_only_an_images_own_captions():
    images = torch.eye(3)[:2]  # (2, 3)
    # image 0's captions: texts 0 and 1; image 1's: text 2. Text 0 points at image 1, text 1 at image 0, text 2 at
    # image 1 (scores: text t . image i)
    texts = torch.tensor([[0.2, 0.9, 0.0], [0.8, 0.1, 0.0], [0.1, 0.7, 0.0]])
    r = clip_benchmark_recalls(texts, images, torch.tensor([0, 0, 1]), ks=(1, 2))
    # text -> image: text 0 misses at 1, texts 1 and 2 hit; image -> text: image 0's best is text 1 (its own), image
    # 1's best is text 0 (image 0's) and its own text 2 comes second
    assert r == {
        "image_retrieval_recall@1": pytest.approx(2 / 3), "text_retrieval_recall@1": 0.5,
        "image_retrieval_recall@2": 1.0, "text_retrieval_recall@2": 1.0,
    }  # fmt: skip


@torch.no_grad()
def test_a_caption_and_a_list_of_one_caption_score_alike_and_repeats_differ_between_definitions(tmp_path):
    model = load_checkpoint(write_clip_run(tmp_path / "clip")).eval()
    tokenizer = get_tokenizer(model)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    captions = ["a red circle", "a blue square", "a red circle", "a green star"]  # images 0 and 2 share a caption

    def run(texts):
        return retrieval_evaluate(model, tokenizer, [{"image": images, "text": texts, "size": 4}])

    one, listed = run(captions), run([[c] for c in captions])
    assert one == listed and (one["num_pairs"], one["num_images"], one["distinct_captions"]) == (4, 4, 3)
    sim = model.encode_image(images, normalize=True) @ model.encode_text(tokenizer(captions), normalize=True).t()
    best = sim.argmax(dim=1).tolist()  # of tied captions, either is of the same text
    hits = [captions[i] == captions[b] for i, b in enumerate(best)]
    assert one["image_to_text_R@1"] == pytest.approx(sum(hits) / 4)
    several = run([[c, "a shape"] for c in captions])  # every image also has a caption all share
    assert (several["num_pairs"], several["distinct_captions"]) == (8, 4)
    assert several["image_to_text_R@1"] == 1.0  # "a shape" is a right answer for every image in ours, so
    assert several["text_retrieval_recall@1"] < 1.0  # is not in CLIP_benchmark's, where only 1 of 4 is its own


def test_eval_retrieval_reads_every_caption_of_a_clip_benchmark_folder(tiny_shapes, tmp_path, clean_accelerate):
    run, bench = write_clip_run(tmp_path / "clip"), tmp_path / "shapes-retrieval"
    export_benchmark(tiny_shapes, bench, kind="retrieval")
    out = tmp_path / "r.json"
    assert main(["--checkpoint", str(run), "--dataset", f"wds:{bench}", "--workers", "0", "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    card = load_card(tiny_shapes)
    captions = [
        c for url in card.shard_urls("test") for s in read_shard(url) for c in json.loads(s["json"])["captions"]
    ]
    assert (metrics["dataset"], metrics["num_images"], metrics["num_pairs"]) == ("shapes-retrieval", 96, 480)
    assert metrics["distinct_captions"] == len(set(captions))
    for k in (1, 5, 10):  # a repeated caption is a hit in ours, not in CLIP_benchmark's
        assert metrics[f"image_to_text_R@{k}"] >= metrics[f"text_retrieval_recall@{k}"]
        assert metrics[f"text_to_image_R@{k}"] >= metrics[f"image_retrieval_recall@{k}"]
