import pytest
import torch
from torch import nn

from multimodal.nn import Block, DropPath, LayerScale, MoEMlp, RMSNorm, SwiGLU, drop_path

TOL = 1e-5


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("init_values", [None, 0.1])
def test_matches_timm_vit_block(init_values: float | None) -> None:
    vit = pytest.importorskip("timm.models.vision_transformer")
    theirs = vit.Block(32, num_heads=4, mlp_ratio=4.0, qkv_bias=True, init_values=init_values).eval()
    ours = Block(32, heads=4, mlp_ratio=4.0, layer_scale_init=init_values).eval()
    ours.load_state_dict(theirs.state_dict())  # strict: same names and shapes
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(ours(x), theirs(x), atol=TOL, rtol=0)


def test_matches_open_clip_block_with_copied_weights() -> None:
    transformer = pytest.importorskip("open_clip.transformer")
    theirs = transformer.ResidualAttentionBlock(32, 4, ls_init_value=0.5).eval()
    ours = Block(32, heads=4, norm_eps=1e-5, layer_scale_init=0.5).eval()
    rename = {
        "ln_1": "norm1",
        "attn.in_proj_weight": "attn.qkv.weight",
        "attn.in_proj_bias": "attn.qkv.bias",
        "attn.out_proj": "attn.proj",
        "ls_1": "ls1",
        "ln_2": "norm2",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
        "ls_2": "ls2",
    }
    state = {}
    for key, value in theirs.state_dict().items():
        prefix = next(p for p in rename if key.startswith(p))
        state[rename[prefix] + key[len(prefix) :]] = value
    ours.load_state_dict(state)
    x = torch.randn(2, 6, 32)
    torch.testing.assert_close(ours(x), theirs(x), atol=TOL, rtol=0)
    causal = torch.full((6, 6), float("-inf")).triu(1)  # open_clip's text-tower mask
    torch.testing.assert_close(ours(x, causal=True), theirs(x, attn_mask=causal), atol=TOL, rtol=0)


def test_cross_attention_block_composition_and_context_padding() -> None:
    block = Block(16, heads=2, cross_attention=True, context_dim=12, layer_scale_init=0.3).eval()
    x, context = torch.randn(2, 5, 16), torch.randn(2, 4, 12)
    pad = torch.tensor([[False, False, True, True], [False, False, False, False]])
    out = block(x, context, context_padding_mask=pad)
    h = x + block.ls1(block.attn(block.norm1(x)))
    h = h + block.ls_cross(block.cross_attn(block.norm_cross(h), context, key_padding_mask=pad))
    expected = h + block.ls2(block.mlp(block.norm2(h)))
    torch.testing.assert_close(out, expected, atol=TOL, rtol=0)
    changed = context.clone()
    changed[0, 2:] = torch.randn(2, 12)  # only padded context tokens change
    torch.testing.assert_close(block(x, changed, context_padding_mask=pad), out, atol=TOL, rtol=0)
    assert not torch.allclose(block(x, changed), out, atol=1e-3)


def test_layer_scale() -> None:
    ls = LayerScale(4, 0.25)
    torch.testing.assert_close(ls(torch.ones(2, 4)), torch.full((2, 4), 0.25))
    block = Block(8, heads=2)
    assert isinstance(block.ls1, nn.Identity) and isinstance(block.ls2, nn.Identity)


def test_rms_swiglu_block() -> None:
    block = Block(16, heads=4, mlp="swiglu", norm="rms", mlp_ratio=2.0)
    assert isinstance(block.norm1, RMSNorm) and isinstance(block.mlp, SwiGLU)
    assert block.mlp.fc2.in_features == 32
    x = torch.randn(2, 3, 16)
    h = x + block.attn(block.norm1(x))
    torch.testing.assert_close(block(x), h + block.mlp(block.norm2(h)), atol=TOL, rtol=0)


def test_moe_block_aux_loss_and_token_ids() -> None:
    dense = Block(16, heads=2)
    dense(torch.randn(2, 3, 16))
    assert dense.aux_loss.item() == 0.0
    moe_block = Block(16, heads=2, mlp="moe", moe={"num_experts": 4, "top_k": 2})
    moe_block(torch.randn(2, 5, 16))
    assert isinstance(moe_block.mlp, MoEMlp) and moe_block.aux_loss.item() > 0

    hashed = Block(16, heads=2, mlp="moe", moe={"num_experts": 4, "router": "hash", "hash_vocab_size": 10})
    x, ids = torch.randn(2, 5, 16), torch.randint(0, 10, (2, 5))
    out = hashed(x, token_ids=ids)
    assert torch.equal(hashed.mlp.last_expert_index.reshape(2, 5), hashed.mlp.hash_table[ids])
    h = x + hashed.attn(hashed.norm1(x))
    torch.testing.assert_close(out, h + hashed.mlp(hashed.norm2(h), token_ids=ids), atol=TOL, rtol=0)


def test_drop_path_per_sample() -> None:
    x = torch.ones(64, 3, 2)
    out = drop_path(x, 0.5, training=True)
    per_sample = out.reshape(64, -1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}  # dropped, or kept and scaled by 1 / (1 - p)
    assert torch.equal(per_sample.min(1).values, per_sample.max(1).values)  # whole sample at once
    assert 0 < (per_sample[:, 0] == 0).sum() < 64
    assert torch.equal(drop_path(x, 0.5, training=False), x)
    assert torch.equal(DropPath(0.5).eval()(x), x)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        DropPath(1.0)


def test_eval_is_deterministic_with_drop_path() -> None:
    block = Block(16, heads=2, drop_path=0.5, attn_drop=0.2, proj_drop=0.2).eval()
    x = torch.randn(4, 3, 16)
    torch.testing.assert_close(block(x), block(x), atol=0, rtol=0)
    block.train()
    assert not torch.allclose(block(x), block(x))


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="cross_attention=True"):
        Block(8, heads=2)(torch.randn(1, 2, 8), torch.randn(1, 2, 8))
    with pytest.raises(ValueError, match="needs context"):
        Block(8, heads=2, cross_attention=True)(torch.randn(1, 2, 8))
    with pytest.raises(ValueError, match="num_experts"):
        Block(8, heads=2, mlp="moe")
    with pytest.raises(ValueError, match="valid mlps: gelu, swiglu, moe"):
        Block(8, heads=2, mlp="relu")
    with pytest.raises(ValueError, match="must not set"):
        Block(8, heads=2, mlp="moe", moe={"num_experts": 2, "hidden_dim": 4})


def test_an_attention_only_block_is_the_residual_plus_attention() -> None:
    torch.manual_seed(0)
    block = Block(16, heads=2, mlp="none").eval()
    assert block.mlp is None and not hasattr(block, "norm2")
    assert {n.split(".")[0] for n, _ in block.named_parameters()} == {"norm1", "attn"}
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(block(x, causal=True), x + block.attn(block.norm1(x), causal=True))
