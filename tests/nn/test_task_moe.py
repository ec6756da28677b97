import pytest
import torch

from multimodal.nn import Mlp, SwiGLU, TaskMoEMlp, Transformer, merge_experts, switch_load_balancing_loss

TOL = 1e-5


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("expert", ["gelu", "swiglu"])
def test_each_task_reaches_only_its_experts(top_k: int, expert: str) -> None:
    moe = TaskMoEMlp(8, 16, num_experts=4, num_tasks=3, top_k=top_k, expert=expert).eval()
    index, weights = moe.routing()
    x = torch.randn(5, 6, 8)
    task_ids = torch.tensor([0, 2, 1, 2, 0])
    seen = {e: [] for e in range(4)}
    for e, exp in enumerate(moe.experts):  # record which sequences each expert is run on
        exp.register_forward_hook(lambda m, args, out, e=e: seen[e].append(args[0].shape[0]))
    out = moe(x, task_ids=task_ids)
    for e in range(4):
        expected_rows = sum(int(e in index[t].tolist()) for t in task_ids.tolist())
        assert sum(seen[e]) == expected_rows  # an expert sees exactly the sequences whose task chose it
    for b, t in enumerate(task_ids.tolist()):  # the output is the weighted sum of the task's experts alone
        reference = sum(w * moe.experts[e](x[b]) for e, w in zip(index[t].tolist(), weights[t].tolist(), strict=True))
        torch.testing.assert_close(out[b], reference, atol=TOL, rtol=0)
    assert (moe.last_expert_index == index[task_ids]).all()
    if top_k > 1:
        torch.testing.assert_close(weights.sum(-1), torch.ones(3))


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("expert", ["gelu", "swiglu"])
def test_dense_expert_reproduces_the_task_output(top_k: int, expert: str) -> None:
    moe = TaskMoEMlp(8, 16, num_experts=4, num_tasks=3, top_k=top_k, expert=expert).eval()
    x = torch.randn(2, 6, 8)
    for task in range(3):
        dense = moe.dense_expert(task)
        assert isinstance(dense, Mlp if expert == "gelu" else SwiGLU)
        assert dense.fc2.in_features == 16 * top_k
        torch.testing.assert_close(dense(x), moe(x, task_ids=torch.full((2,), task)), atol=TOL, rtol=0)


def test_merge_experts_with_biases_is_the_weighted_sum() -> None:
    experts = [SwiGLU(8, 4, bias=True), SwiGLU(8, 4, bias=True), SwiGLU(8, 4, bias=True)]
    x = torch.randn(3, 8)
    merged = merge_experts(experts, [0.5, 0.3, 0.2])
    torch.testing.assert_close(
        merged(x), sum(w * e(x) for e, w in zip(experts, [0.5, 0.3, 0.2], strict=True)), atol=TOL, rtol=0
    )
    with pytest.raises(ValueError, match="one weight per expert"):
        merge_experts(experts, [1.0])
    with pytest.raises(ValueError, match="of one kind"):
        merge_experts([Mlp(8, 4), SwiGLU(8, 4)], [0.5, 0.5])


def test_aux_loss_is_switch_loss_over_tasks() -> None:
    moe = TaskMoEMlp(4, 8, num_experts=2, num_tasks=2)
    with torch.no_grad():
        moe.gate_logits.copy_(torch.tensor([[2.0, 0.0], [0.0, 2.0]]))  # task 0 -> expert 0, task 1 -> expert 1
    p = torch.tensor(2.0).exp() / (torch.tensor(2.0).exp() + 1)
    # f = (1/2, 1/2); P = ((p + 1 - p) / 2, ...) = (1/2, 1/2): E * sum f P = 2 * (1/4 + 1/4) = 1
    torch.testing.assert_close(moe.aux_loss, torch.tensor(1.0))
    with torch.no_grad():
        moe.gate_logits.copy_(torch.tensor([[2.0, 0.0], [2.0, 0.0]]))  # both tasks on expert 0
    torch.testing.assert_close(moe.aux_loss, 2 * p)  # f = (1, 0), P_0 = p
    probs = moe.gate_logits.softmax(-1)
    torch.testing.assert_close(moe.aux_loss, switch_load_balancing_loss(probs, probs.argmax(-1), 2))
    moe.aux_loss.backward()
    assert moe.gate_logits.grad.abs().sum() > 0


def test_gradients_reach_gate_and_chosen_experts_only() -> None:
    moe = TaskMoEMlp(8, 16, num_experts=4, num_tasks=2)
    chosen = moe.routing()[0][0, 0].item()
    moe(torch.randn(2, 3, 8), task_ids=torch.zeros(2, dtype=torch.long)).sum().backward()
    assert moe.gate_logits.grad[0].abs().sum() > 0 and moe.gate_logits.grad[1].abs().sum() == 0
    for e, expert in enumerate(moe.experts):
        assert (expert.fc1.weight.grad is not None) == (e == chosen)


def test_transformer_routes_by_task_and_sums_aux_loss() -> None:
    model = Transformer(8, 2, heads=2, mlp="task_moe", moe=dict(num_experts=3, num_tasks=2), moe_every=2).eval()
    assert isinstance(model.blocks[0].mlp, Mlp) and isinstance(model.blocks[1].mlp, TaskMoEMlp)
    x = torch.randn(2, 4, 8)
    out = model(x, task_ids=torch.tensor([0, 1]))
    torch.testing.assert_close(out[1:], model(x[1:], task_ids=torch.tensor([1])), atol=TOL, rtol=0)
    torch.testing.assert_close(model.aux_loss, model.blocks[1].mlp.aux_loss)
    with pytest.raises(ValueError, match="pass task_ids"):
        model(x)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="top_k"):
        TaskMoEMlp(8, 16, num_experts=2, num_tasks=2, top_k=3)
    with pytest.raises(ValueError, match="num_experts and num_tasks"):
        TaskMoEMlp(8, 16, num_experts=2, num_tasks=0)
    moe = TaskMoEMlp(8, 16, num_experts=2, num_tasks=2)
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match=r"lie in \[0, 2\)"):
        moe(x, task_ids=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="integer tensor"):
        moe(x, task_ids=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="task must be in"):
        moe.dense_expert(2)
