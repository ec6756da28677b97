import math

import pytest
import torch
from torch import Tensor

from multimodal.nn import Mlp, MoEMlp, SwiGLU, switch_load_balancing_loss

TOL = 1e-5


def reference_moe(moe: MoEMlp, x: Tensor) -> tuple[Tensor, list[list[bool]]]:
    """Per-token Python loop: route, apply capacity in priority order, sum gated expert outputs."""
    x_flat = x.reshape(-1, x.shape[-1])
    T, E, k = x_flat.shape[0], moe.num_experts, moe.top_k
    probs = torch.softmax(x_flat @ moe.router.weight.T, dim=-1)
    choices, gates = [], []
    for t in range(T):
        ranked = sorted(range(E), key=lambda e, t=t: -probs[t, e].item())[:k]
        chosen = [probs[t, e] for e in ranked]
        total = sum(chosen) if k > 1 else 1.0
        choices.append(ranked)
        gates.append([p / total for p in chosen])
    capacity = math.ceil(moe.capacity_factor * T * k / E)
    load = [0] * E
    kept = [[False] * k for _ in range(T)]
    for j in range(k):  # first choices of all tokens, then second choices
        for t in range(T):
            e = choices[t][j]
            if load[e] < capacity:
                load[e] += 1
                kept[t][j] = True
    out = torch.zeros_like(x_flat)
    for t in range(T):
        for j in range(k):
            if kept[t][j]:
                out[t] += gates[t][j] * moe.experts[choices[t][j]](x_flat[t])
    return out.reshape(x.shape), kept


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("expert", ["gelu", "swiglu"])
def test_topk_matches_per_token_reference(top_k: int, expert: str) -> None:
    moe = MoEMlp(8, 16, num_experts=4, top_k=top_k, capacity_factor=4.0, expert=expert).eval()
    assert isinstance(moe.experts[0], Mlp if expert == "gelu" else SwiGLU)
    x = torch.randn(2, 6, 8)
    expected, kept = reference_moe(moe, x)
    assert all(all(row) for row in kept)  # capacity 4.0: nothing dropped
    torch.testing.assert_close(moe(x), expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("top_k", [1, 2])
def test_capacity_drops_match_reference(top_k: int) -> None:
    moe = MoEMlp(8, 16, num_experts=4, top_k=top_k, capacity_factor=0.5).eval()
    x = torch.randn(2, 8, 8)
    expected, kept = reference_moe(moe, x)
    out = moe(x)
    assert moe.capacity(16) == math.ceil(0.5 * 16 * top_k / 4)
    assert moe.last_kept.tolist() == kept
    assert not moe.last_kept.all()  # some assignments were dropped
    torch.testing.assert_close(out, expected, atol=TOL, rtol=0)
    fully_dropped = ~moe.last_kept.any(dim=1).reshape(2, 8)
    assert torch.equal(out[fully_dropped], torch.zeros_like(out[fully_dropped]))


def test_top1_drops_tokens_past_capacity_in_token_order() -> None:
    moe = MoEMlp(2, 4, num_experts=2, top_k=1, capacity_factor=1.0)
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(2))  # logits = x
    x = torch.tensor([[[3.0, 0.0]] * 6])  # all 6 tokens pick expert 0; capacity = ceil(6 / 2) = 3
    out = moe(x)
    assert moe.last_expert_index.squeeze(1).tolist() == [0] * 6
    assert moe.last_kept.squeeze(1).tolist() == [True, True, True, False, False, False]
    assert out[0, :3].abs().sum() > 0
    assert torch.equal(out[0, 3:], torch.zeros(3, 2))


def test_top2_first_choices_take_priority_over_earlier_second_choices() -> None:
    moe = MoEMlp(3, 4, num_experts=3, top_k=2, capacity_factor=0.75)  # capacity = ceil(0.75 * 4 * 2 / 3) = 2
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(3))  # logits = x
    x = torch.tensor([[1.0, 2.0, 0.0], [1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [2.0, 1.0, 0.0]])
    out = moe(x)
    assert moe.capacity(4) == 2
    assert moe.last_expert_index.tolist() == [[1, 0], [1, 0], [0, 1], [0, 1]]
    # expert 0 takes the first choices of tokens 2, 3; the second choices of tokens 0, 1 come after and drop
    assert moe.last_kept.tolist() == [[True, False]] * 4
    expected, kept = reference_moe(moe, x)
    assert kept == moe.last_kept.tolist()
    torch.testing.assert_close(out, expected, atol=TOL, rtol=0)


def test_top1_gate_is_raw_probability_top2_gates_renormalised() -> None:
    x = torch.randn(5, 8)
    top1 = MoEMlp(8, 16, num_experts=4, top_k=1, capacity_factor=None)
    out = top1(x)
    probs = torch.softmax(x @ top1.router.weight.T, dim=-1)
    p, e = probs.max(dim=-1)
    expected = torch.stack([p[t] * top1.experts[e[t]](x[t]) for t in range(5)])
    torch.testing.assert_close(out, expected, atol=TOL, rtol=0)
    torch.testing.assert_close(top1.last_router_probs, probs, atol=TOL, rtol=0)


def test_any_leading_shape() -> None:
    moe = MoEMlp(8, 16, num_experts=3, top_k=2, capacity_factor=None)
    x = torch.randn(2, 3, 4, 8)
    torch.testing.assert_close(moe(x), moe(x.reshape(24, 8)).reshape(2, 3, 4, 8), atol=TOL, rtol=0)


def test_switch_loss_hand_example() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    index = torch.tensor([0, 0, 1, 0])  # f = [0.75, 0.25], P = [0.65, 0.35]
    expected = 2 * (0.75 * 0.65 + 0.25 * 0.35)  # = 1.15
    torch.testing.assert_close(switch_load_balancing_loss(probs, index, 2), torch.tensor(expected))
    index_k2 = torch.stack([index, 1 - index], dim=1)  # only the first choice counts
    torch.testing.assert_close(switch_load_balancing_loss(probs, index_k2, 2), torch.tensor(expected))


def test_switch_loss_is_one_for_uniform_routing_and_e_when_collapsed() -> None:
    E, T = 4, 8
    uniform = torch.full((T, E), 1 / E)
    balanced = torch.arange(T) % E
    torch.testing.assert_close(switch_load_balancing_loss(uniform, balanced, E), torch.tensor(1.0))
    collapsed = torch.zeros(T, E)
    collapsed[:, 0] = 1.0
    torch.testing.assert_close(
        switch_load_balancing_loss(collapsed, torch.zeros(T, dtype=torch.long), E), torch.tensor(4.0)
    )
    with pytest.raises(ValueError, match=r"\(T, 4\)"):
        switch_load_balancing_loss(uniform[:, :3], balanced, E)


def test_aux_loss_is_switch_loss_of_last_forward() -> None:
    moe = MoEMlp(8, 16, num_experts=4, top_k=2)
    assert moe.aux_loss.item() == 0.0
    moe(torch.randn(2, 5, 8))
    expected = switch_load_balancing_loss(moe.last_router_probs, moe.last_expert_index, 4)
    torch.testing.assert_close(moe.aux_loss, expected)
    assert moe.aux_loss.item() > 0


def test_gradients_reach_router_weights() -> None:
    moe = MoEMlp(8, 16, num_experts=4, top_k=1, capacity_factor=None)
    moe(torch.randn(2, 5, 8)).pow(2).sum().backward()  # through the gates alone
    assert moe.router.weight.grad.abs().sum() > 0
    moe.zero_grad()
    moe(torch.randn(2, 5, 8))
    moe.aux_loss.backward()  # through the load-balancing loss alone
    assert moe.router.weight.grad.abs().sum() > 0


def test_hash_routing_is_fixed_per_token_id() -> None:
    moe = MoEMlp(8, 16, num_experts=4, router="hash", hash_vocab_size=100)
    assert moe.router is None
    assert "hash_table" in dict(moe.named_buffers())
    assert all(name.startswith("experts.") for name, _ in moe.named_parameters())  # nothing learned in routing
    torch.testing.assert_close(
        MoEMlp(8, 16, num_experts=4, router="hash", hash_vocab_size=100).hash_table, moe.hash_table
    )
    counts = torch.bincount(moe.hash_table, minlength=4)
    assert counts.max() - counts.min() <= 1  # balanced assignment of ids

    ids = torch.tensor([[5, 7, 5, 42], [42, 5, 7, 105]])  # 105 wraps to id 5
    x = torch.randn(2, 4, 8)
    out = moe(x, token_ids=ids)
    experts = moe.last_expert_index.reshape(2, 4)
    table = moe.hash_table
    assert experts.tolist() == [[table[5], table[7], table[5], table[42]], [table[42], table[5], table[7], table[5]]]
    expected = torch.stack([moe.experts[e](x.reshape(8, 8)[t]) for t, e in enumerate(experts.reshape(-1))])
    torch.testing.assert_close(out, expected.reshape(2, 4, 8), atol=TOL, rtol=0)  # gate 1.0, no drops
    assert moe.aux_loss.item() == 0.0

    moe(torch.randn(3, 4, 8), token_ids=torch.full((3, 4), 5))
    assert set(moe.last_expert_index.reshape(-1).tolist()) == {table[5].item()}


def test_hash_routing_defaults_to_position_ids() -> None:
    moe = MoEMlp(8, 16, num_experts=4, router="hash", hash_vocab_size=100)
    moe(torch.randn(3, 6, 8))
    expected = moe.hash_table[:6].repeat(3)
    assert moe.last_expert_index.reshape(-1).tolist() == expected.tolist()


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="valid routers: topk, hash"):
        MoEMlp(8, 16, num_experts=4, router="expert_choice")
    with pytest.raises(ValueError, match="valid experts: gelu, swiglu"):
        MoEMlp(8, 16, num_experts=4, expert="relu")
    with pytest.raises(ValueError, match="top_k"):
        MoEMlp(8, 16, num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="top_k=1"):
        MoEMlp(8, 16, num_experts=4, router="hash", top_k=2)
    moe = MoEMlp(8, 16, num_experts=4, router="hash")
    with pytest.raises(ValueError, match=r"token_ids must have shape \(2, 3\)"):
        moe(torch.randn(2, 3, 8), token_ids=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        moe(torch.randn(2, 3, 8), token_ids=torch.zeros(2, 3))
