import pytest
import torch

from multimodal.nn import DEMixMlp, Transformer

TOL = 1e-5


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_task_ids_pick_one_expert_exactly() -> None:
    demix = DEMixMlp(8, 16, num_tasks=3).eval()
    x = torch.randn(4, 5, 8)
    out = demix(x, task_ids=torch.tensor([2, 0, 2, 1]))
    for b, t in enumerate([2, 0, 2, 1]):
        assert torch.equal(out[b], demix.experts[t](x[b : b + 1])[0])


def test_task_weights_mix_experts() -> None:
    demix = DEMixMlp(8, 16, num_tasks=3).eval()
    x = torch.randn(2, 5, 8)
    weights = torch.tensor([[0.2, 0.5, 0.3], [0.0, 1.0, 0.0]])
    out = demix(x, task_weights=weights)
    expected = sum(weights[:, t, None, None] * demix.experts[t](x) for t in range(3))
    torch.testing.assert_close(out, expected, atol=TOL, rtol=0)
    torch.testing.assert_close(out[1], demix(x[1:], task_ids=torch.tensor([1]))[0], atol=TOL, rtol=0)


def test_added_expert_leaves_old_tasks_bit_identical() -> None:
    model = Transformer(8, 2, heads=2, mlp="demix", moe=dict(num_tasks=2)).eval()
    x, tasks = torch.randn(3, 4, 8), torch.tensor([0, 1, 0])
    before = model(x, task_ids=tasks)
    for block in model.blocks:
        assert block.mlp.add_expert(init_from=1) == 2
    assert torch.equal(model(x, task_ids=tasks), before)
    new = model(x, task_ids=torch.tensor([2, 2, 2]))  # a copy of expert 1: the new task starts where task 1 is
    torch.testing.assert_close(new[1], before[1], atol=0, rtol=0)
    fresh = DEMixMlp(8, 16, num_tasks=1)
    fresh.add_expert()
    assert not torch.equal(fresh.experts[0].fc1.weight, fresh.experts[1].fc1.weight)


def test_bad_arguments_raise() -> None:
    demix = DEMixMlp(8, 16, num_tasks=2)
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="not both or neither"):
        demix(x)
    with pytest.raises(ValueError, match="not both or neither"):
        demix(x, task_ids=torch.tensor([0, 1]), task_weights=torch.ones(2, 2) / 2)
    with pytest.raises(ValueError, match=r"float \(2, 2\)"):
        demix(x, task_weights=torch.ones(2, 3) / 3)
    with pytest.raises(ValueError, match="init_from"):
        demix.add_expert(init_from=5)
    with pytest.raises(ValueError, match="num_tasks"):
        DEMixMlp(8, 16, num_tasks=0)
