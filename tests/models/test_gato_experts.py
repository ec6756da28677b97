"""GATO with experts: task MoE's extracted subnetwork, DEMix's added task and posterior, token MoE's aux loss."""

from __future__ import annotations

import pytest
import torch

from multimodal.models.gato import Gato, GatoConfig
from multimodal.nn import DEMixMlp, Mlp, MoEMlp, SwiGLU, TaskMoEMlp

from .test_gato import sample_batch

TASKS = ("shapes", "cartpole", "pendulum")


def tiny(**overrides) -> Gato:
    cfg = GatoConfig(
        text_vocab_size=1024, dim=32, depth=2, heads=2, context_length=64, patch_channels=8, patch_groups=4
    )
    return Gato(cfg.replace(**overrides)).eval()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def with_task(batch: dict[str, torch.Tensor], task: int) -> dict[str, torch.Tensor]:
    return {**batch, "task": torch.full((batch["tokens"].shape[0],), task)}


@pytest.mark.parametrize(
    ("top_k", "moe_every", "expert"), [(1, 1, "gelu"), (2, 1, "gelu"), (1, 2, "gelu"), (2, 1, "swiglu")]
)
def test_extracted_task_subnetwork_gives_the_same_logits(top_k: int, moe_every: int, expert: str) -> None:
    model = tiny(mlp="task_moe", moe=dict(num_experts=4, top_k=top_k, expert=expert), moe_every=moe_every, tasks=TASKS)
    batch = sample_batch()
    for name in TASKS:
        dense = model.extract_task(name)
        assert dense.cfg.mlp == expert and dense.cfg.tasks == (name,) and not dense.cfg.routes_by_task
        assert isinstance(dense.transformer.blocks[-1].mlp, Mlp if expert == "gelu" else SwiGLU)
        full = model.logits(model(with_task(batch, model.task_index(name))))
        torch.testing.assert_close(dense.logits(dense(batch)), full, atol=1e-5, rtol=0)
    active = sum(p.numel() for p in model.transformer.blocks[-1].mlp.experts[0].parameters())
    assert sum(p.numel() for p in dense.transformer.blocks[-1].mlp.parameters()) == pytest.approx(top_k * active, 0.01)


def test_extraction_refuses_what_one_dense_gato_cannot_hold() -> None:
    model = tiny(mlp="task_moe", moe=dict(num_experts=4, top_k=2), moe_every=2, tasks=TASKS)
    with pytest.raises(ValueError, match="one dense GATO cannot hold both"):
        model.extract_task("shapes")
    with pytest.raises(ValueError, match="only task-routed experts"):
        tiny().extract_task("shapes")
    with pytest.raises(ValueError, match="not one of this model's tasks"):
        model.extract_task("acrobot")


def test_demix_added_task_leaves_old_tasks_bit_identical_and_extracts() -> None:
    model = tiny(mlp="demix", tasks=TASKS)
    batch = sample_batch()
    before = [model(with_task(batch, t)) for t in range(3)]
    assert model.add_task("acrobot", init_from="cartpole") == 3
    assert model.cfg.tasks == (*TASKS, "acrobot") and all(b.mlp.num_tasks == 4 for b in model.transformer.blocks)
    for t in range(3):
        assert torch.equal(model(with_task(batch, t)), before[t])
    assert torch.equal(model(with_task(batch, 3)), before[1])  # a copy of cartpole's experts
    dense = model.extract_task("pendulum")
    torch.testing.assert_close(dense(batch), before[2], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="already one of"):
        model.add_task("acrobot")
    with pytest.raises(ValueError, match="added to DEMix experts"):
        tiny(mlp="task_moe", moe=dict(num_experts=2), tasks=TASKS).add_task("acrobot")


def test_demix_posterior_is_bayes_rule_over_the_context_likelihoods() -> None:
    model = tiny(mlp="demix", tasks=TASKS)
    batch = sample_batch()
    posterior = model.task_posterior(batch)
    torch.testing.assert_close(posterior.sum(-1), torch.ones(2))
    by_hand = torch.zeros(2, 3)
    for t in range(3):
        logits = model.logits(model(with_task(batch, t))[:, :-1]).float().log_softmax(-1)
        log_p = logits.gather(-1, batch["tokens"][:, 1:, None])[..., 0]  # (B, T-1)
        mask = batch["loss_mask"][:, 1:] & batch["padding_mask"][:, 1:]
        by_hand[:, t] = (log_p * mask).sum(1)
    torch.testing.assert_close(posterior, by_hand.softmax(-1), atol=1e-5, rtol=0)
    assert (posterior - 1 / 3).abs().max() > 0.01  # the experts' likelihoods differ, and so do the weights
    prior = torch.tensor([0.7, 0.2, 0.1])
    torch.testing.assert_close(
        model.task_posterior(batch, prior), (by_hand + prior.log()).softmax(-1), atol=1e-5, rtol=0
    )
    no_targets = {k: v[:, :1] for k, v in batch.items() if k not in ("patches", "patch_position")}
    no_targets |= {"patches": batch["patches"], "patch_position": batch["patch_position"]}
    torch.testing.assert_close(model.task_posterior(no_targets, prior), prior.expand(2, 3))
    mixed = model({**batch, "task_weights": posterior})  # the mixture runs
    assert mixed.shape == model(with_task(batch, 0)).shape
    with pytest.raises(ValueError, match="summing to 1"):
        model.task_posterior(batch, torch.tensor([0.5, 0.2, 0.1]))


def test_routed_models_need_tasks() -> None:
    with pytest.raises(ValueError, match="list the task names"):
        tiny(mlp="demix")
    with pytest.raises(ValueError, match="comes from the length of tasks"):
        tiny(mlp="task_moe", moe=dict(num_experts=2, num_tasks=3), tasks=TASKS)
    with pytest.raises(ValueError, match="names a task twice"):
        tiny(mlp="demix", tasks=("a", "a"))
    model = tiny(mlp="task_moe", moe=dict(num_experts=2), tasks=TASKS)
    assert isinstance(model.transformer.blocks[0].mlp, TaskMoEMlp)
    with pytest.raises(ValueError, match="the batch needs 'task'"):
        model(sample_batch())
    with pytest.raises(ValueError, match="task_weights"):
        model({**sample_batch(), "task_weights": torch.ones(2, 3) / 3})
    assert isinstance(tiny(mlp="demix", tasks=TASKS).transformer.blocks[0].mlp, DEMixMlp)


def test_token_moe_gato_reports_its_load_balancing_loss() -> None:
    model = tiny(mlp="moe", moe=dict(num_experts=4, capacity_factor=None)).train()
    assert isinstance(model.transformer.blocks[0].mlp, MoEMlp)
    loss, _ = model.loss(sample_batch())
    assert model.aux_loss.requires_grad and model.aux_loss.item() >= 1.0 - 1e-6  # >= 1, equality when uniform
    (loss + 0.01 * model.aux_loss).backward()
    assert model.transformer.blocks[0].mlp.router.weight.grad.abs().sum() > 0
    assert tiny().aux_loss.item() == 0.0
