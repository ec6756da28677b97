"""What experts cost and how they are used: active parameters per token, expert load, and training and inference
throughput of GATO models (dense, token MoE, task MoE, DEMix, a BTM ensemble) on one fixed set of sequences."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import SampleStream, make_loader
from ..data.cards import DatasetCard
from ..data.control import env_spec, read_episodes
from ..models.btm import GatoEnsemble
from ..models.gato import Gato
from ..nn import DEMixMlp, MoEMlp, TaskMoEMlp
from ..pipelines.gato import prompted_window, route
from ..tokenizers.gato import GatoTokenizer, collate_tokens
from .captioning import _collate, _WithObjects

__all__ = ["active_parameters", "expert_load", "measurement_batches", "throughput"]


def active_parameters(model: nn.Module) -> int:
    """Parameters one token passes through: every parameter, except that an expert layer counts only the experts a
    token uses (top_k of token or task MoE, one of DEMix under a task label); an ensemble counts every branch."""
    if isinstance(model, GatoEnsemble):
        return sum(active_parameters(b) for b in model.branches)
    total = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        if isinstance(module, (MoEMlp, TaskMoEMlp, DEMixMlp)):
            used = module.top_k if isinstance(module, (MoEMlp, TaskMoEMlp)) else 1
            per_expert = sum(p.numel() for p in module.experts[0].parameters())
            total -= (len(module.experts) - used) * per_expert
    return total


@torch.no_grad()
def expert_load(model: nn.Module, batches: dict[str, dict[str, torch.Tensor]]) -> list[list[float]] | None:
    """Per expert layer, the share of tokens (token MoE: first choices over every real token of ``batches``) or of
    tasks (task MoE: its gates) that each expert receives; None for a model without such layers. Even load is
    1 / num_experts everywhere."""
    token_moe = [m for m in model.modules() if isinstance(m, MoEMlp)]
    counts = [torch.zeros(m.num_experts) for m in token_moe]
    if token_moe:
        model.eval()
        for name, batch in batches.items():
            model(_routed(model, name, batch))
            real = batch["padding_mask"].reshape(-1)  # (B * T,) padding is routed too; it is not counted
            for count, module in zip(counts, token_moe, strict=True):
                count += torch.bincount(module.last_expert_index[:, 0][real], minlength=module.num_experts).cpu()
    loads = [(c / c.sum()).tolist() for c in counts]
    for module in model.modules():
        if isinstance(module, TaskMoEMlp):
            first = module.routing()[0][:, 0]
            loads.append((torch.bincount(first, minlength=module.num_experts) / first.numel()).tolist())
    return loads or None


def measurement_batches(
    tokenizer: GatoTokenizer,
    cards: dict[str, DatasetCard],
    *,
    context_length: int,
    image_size: int,
    per_task: int = 16,
    seed: int = 0,
) -> dict[str, dict[str, torch.Tensor]]:
    """One fixed batch of ``per_task`` sequences per task, as training draws them: control windows of test-split
    demonstrations (a quarter prompted), or test images with the caption naming their main object."""
    rng = np.random.default_rng(seed)
    batches = {}
    for name, card in cards.items():
        if card.generator == "control":
            spec = env_spec(card.generator_args["env_id"])
            episodes = [tokenizer.encode_arrays(e.observations, e.actions) for e in read_episodes(card, "test")]
            sequences = [
                prompted_window(episodes, spec, context_length, rng, prompt_prob=0.25) for _ in range(per_task)
            ]
        else:
            stream = SampleStream(
                urls=card.shard_urls("test"), decode=_WithObjects(image_size, card.image_key),
                collate=_collate, batch_size=per_task, infinite=False, shuffle_buffer=0,
            )  # fmt: skip
            batch = next(iter(make_loader(stream, num_workers=0)))
            sequences = [
                tokenizer.encode_caption(image, f"a {objects[0][0]} {objects[0][1]}")
                for image, objects in zip(batch["image"], batch["objects"], strict=True)
            ]
        batches[name] = collate_tokens(sequences)
    return batches


def throughput(
    model: nn.Module, batches: dict[str, dict[str, torch.Tensor]], *, train: bool, repeats: int = 3
) -> float:
    """Tokens per second over every batch (best of ``repeats`` passes): forward and backward with ``train``,
    forward only (no grad, eval mode) without. Task-routed models get each batch's task id."""
    if train and isinstance(model, GatoEnsemble):
        raise ValueError("an ensemble is not trained as one model; measure its branches")
    tokens = sum(int(b["padding_mask"].sum()) for b in batches.values())
    best = float("inf")
    model.train(train)
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            for name, batch in batches.items():
                batch = _routed(model, name, batch)
                if train:
                    loss, _ = model.loss(batch)
                    loss.backward()
                elif isinstance(model, GatoEnsemble):
                    with torch.no_grad():
                        [b(batch) for b in model.branches]
                else:
                    with torch.no_grad():
                        model(batch)
            best = min(best, time.perf_counter() - start)
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
    return tokens / best


def _routed(model: nn.Module, name: str, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    return route(model, batch, model.task_id(name)) if isinstance(model, Gato) else batch
