import pytest
import torch
from torch.utils.checkpoint import checkpoint

import multimodal.nn.transformer as transformer_module
from multimodal.nn import Block, Mlp, MoEMlp, SwiGLU, Transformer

TOL = 1e-5
MOE = {"num_experts": 4, "top_k": 2, "capacity_factor": 2.0}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_equals_blocks_in_sequence() -> None:
    model = Transformer(16, 3, heads=4).eval()
    assert len(model.blocks) == 3 and all(isinstance(b, Block) for b in model.blocks)
    x = torch.randn(2, 5, 16)
    expected = x
    for block in model.blocks:
        expected = block(expected)
    torch.testing.assert_close(model(x), expected, atol=0, rtol=0)


def test_drop_path_rate_increases_linearly() -> None:
    model = Transformer(8, 5, heads=2, drop_path_rate=0.4)
    assert [round(b.drop_path1.p, 6) for b in model.blocks] == [0.0, 0.1, 0.2, 0.3, 0.4]


@pytest.mark.parametrize("mlp", ["gelu", "moe"])
def test_grad_checkpointing_gives_same_outputs_and_grads(mlp: str) -> None:
    kwargs = {"heads": 4, "mlp": mlp, "moe": MOE if mlp == "moe" else None, "drop_path_rate": 0.3}
    plain = Transformer(16, 3, **kwargs).train()
    ckpt = Transformer(16, 3, grad_checkpointing=True, **kwargs).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(4, 6, 16)
    results = []
    for model in (plain, ckpt):
        torch.manual_seed(1)  # same drop-path draws; checkpointing replays the RNG state on recompute
        xi = x.clone().requires_grad_(True)
        out = model(xi, causal=True)
        (out.pow(2).mean() + 0.1 * model.aux_loss).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append((out.detach(), xi.grad, grads))
    (out_a, gx_a, grads_a), (out_b, gx_b, grads_b) = results
    torch.testing.assert_close(out_b, out_a, atol=TOL, rtol=0)
    torch.testing.assert_close(gx_b, gx_a, atol=TOL, rtol=0)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) == len(list(plain.parameters()))
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=TOL, rtol=0, msg=name)


def test_set_grad_checkpointing_only_applies_when_training_with_grad(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def counting_checkpoint(*args, **kwargs):
        calls.append(kwargs["use_reentrant"])
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(transformer_module, "checkpoint", counting_checkpoint)
    model = Transformer(8, 2, heads=2)
    model.set_grad_checkpointing()
    x = torch.randn(1, 3, 8)
    model.eval()(x)
    with torch.no_grad():
        model.train()(x)
    assert calls == []
    model.train()(x)
    assert calls == [False, False]  # one non-reentrant checkpoint per block
    model.set_grad_checkpointing(False)
    model(x)
    assert len(calls) == 2


def test_eval_is_deterministic_with_drop_path() -> None:
    model = Transformer(16, 4, heads=2, drop_path_rate=0.5, attn_drop=0.1, proj_drop=0.1).eval()
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(model(x), model(x), atol=0, rtol=0)


def test_moe_transformer_aux_loss() -> None:
    model = Transformer(16, 4, heads=2, mlp="moe", moe=MOE)
    assert model.aux_loss.item() == 0.0  # before any forward
    model(torch.randn(2, 6, 16))
    assert model.aux_loss.item() > 0
    torch.testing.assert_close(model.aux_loss, sum(b.aux_loss for b in model.blocks))
    dense = Transformer(16, 2, heads=2)
    dense(torch.randn(2, 6, 16))
    assert dense.aux_loss.item() == 0.0


def test_moe_every_k_th_block() -> None:
    model = Transformer(16, 4, heads=2, mlp="moe", moe=MOE, moe_every=2)
    assert [isinstance(b.mlp, MoEMlp) for b in model.blocks] == [False, True, False, True]
    assert isinstance(model.blocks[0].mlp, Mlp)
    swiglu = Transformer(16, 3, heads=2, mlp="moe", moe={**MOE, "expert": "swiglu"}, moe_every=3)
    assert [type(b.mlp) for b in swiglu.blocks] == [SwiGLU, SwiGLU, MoEMlp]
    with pytest.raises(ValueError, match=r"only applies with experts \(moe, task_moe, demix\)"):
        Transformer(16, 4, heads=2, moe_every=2)
    with pytest.raises(ValueError, match="no MoE block"):
        Transformer(16, 2, heads=2, mlp="moe", moe=MOE, moe_every=3)


def test_causal_outputs_ignore_future_tokens() -> None:
    model = Transformer(16, 3, heads=4, norm="rms", mlp="swiglu").eval()
    x = torch.randn(2, 8, 16)
    out = model(x, causal=True)
    for i in range(7):
        changed = x.clone()
        changed[:, i + 1 :] = torch.randn(2, 7 - i, 16)
        torch.testing.assert_close(model(changed, causal=True)[:, : i + 1], out[:, : i + 1], atol=TOL, rtol=0)
        assert not torch.allclose(model(changed)[:, : i + 1], model(x)[:, : i + 1], atol=1e-4)


def test_key_padding_hides_padded_tokens() -> None:
    model = Transformer(16, 2, heads=2).eval()
    x = torch.randn(2, 6, 16)
    pad = torch.tensor([[False] * 6, [False] * 3 + [True] * 3])
    out = model(x, key_padding_mask=pad)
    changed = x.clone()
    changed[1, 3:] = torch.randn(3, 16)
    torch.testing.assert_close(model(changed, key_padding_mask=pad)[~pad], out[~pad], atol=TOL, rtol=0)


def test_cross_attention_transformer() -> None:
    model = Transformer(16, 2, heads=2, cross_attention=True, context_dim=8).eval()
    x, context = torch.randn(2, 4, 16), torch.randn(2, 3, 8)
    expected = model.blocks[1](model.blocks[0](x, context), context)
    torch.testing.assert_close(model(x, context), expected, atol=0, rtol=0)
    with pytest.raises(ValueError, match="needs context"):
        model(x)
