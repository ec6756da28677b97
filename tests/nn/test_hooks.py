"""Hook points on the shared backbone: names, reading, replacing, removal (also when the forward raises), and the
explicit attention path hooks force agreeing with the fused one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from multimodal.nn import (
    Attention,
    LayerNorm,
    Mlp,
    RMSNorm,
    Transformer,
    hook_points,
    hooks,
    run_with_cache,
    run_with_hooks,
)


def tiny(**kwargs) -> Transformer:
    torch.manual_seed(0)
    return Transformer(16, 2, heads=4, **kwargs).eval()


def test_hook_points_are_named_by_their_path_with_transformerlens_suffixes() -> None:
    names = set(hook_points(tiny()))
    for i in range(2):
        block = {f"blocks.{i}.hook_{n}" for n in ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")}
        attn = {f"blocks.{i}.attn.hook_{n}" for n in ("q", "k", "v", "attn_scores", "pattern", "z", "result")}
        norms = {f"blocks.{i}.{norm}.hook_{n}" for norm in ("norm1", "norm2") for n in ("scale", "normalized")}
        assert block | attn | norms | {f"blocks.{i}.mlp.hook_pre", f"blocks.{i}.mlp.hook_post"} <= names
    assert not any("hook" in key for key in tiny().state_dict())  # no parameters, no buffers: checkpoints unchanged


@pytest.mark.parametrize("case", ["plain", "causal", "padding", "bias"])
def test_every_hook_attached_leaves_the_output_unchanged(case: str) -> None:
    """Hooking scores and pattern switches attention to the explicit path, hook_result to per-head outputs: the
    output must be the fused path's."""
    model, x = tiny(), torch.randn(3, 7, 16)
    kwargs = {
        "plain": {},
        "causal": {"causal": True},
        "padding": {"key_padding_mask": torch.tensor([[False] * 7, [False] * 4 + [True] * 3, [True] * 7])},
        "bias": {"attn_bias": torch.randn(1, 4, 7, 7)},
    }[case]
    plain = model(x, **kwargs)
    hooked, cache = run_with_cache(model, x, **kwargs)
    torch.testing.assert_close(hooked, plain, rtol=1e-5, atol=1e-6)
    assert len(cache) == len(hook_points(model))
    pattern = cache["blocks.0.attn.hook_pattern"]  # (B, H, N, M)
    assert pattern.shape == (3, 4, 7, 7) and cache["blocks.1.attn.hook_q"].shape == (3, 7, 4, 4)
    rows = pattern.sum(-1)
    if case == "padding":  # the all-padding sample attends to nothing; the other rows sum to one
        assert torch.equal(rows[2], torch.zeros(4, 7)) and torch.allclose(rows[:2], torch.ones(2, 4, 7))
        assert torch.equal(pattern[1, ..., 4:], torch.zeros(4, 7, 3))
    else:
        assert torch.allclose(rows, torch.ones(3, 4, 7))
    if case == "causal":
        assert torch.equal(pattern.triu(1), torch.zeros_like(pattern))


def test_cached_activations_are_what_the_block_computes() -> None:
    model, x = tiny(), torch.randn(2, 5, 16)
    _, cache = run_with_cache(model, x)
    block = model.blocks[0]
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], x)
    torch.testing.assert_close(cache["blocks.1.hook_resid_pre"], cache["blocks.0.hook_resid_post"])
    q = F.linear(block.norm1(x), block.attn.qkv.weight[:16], block.attn.qkv.bias[:16]).view(2, 5, 4, 4)
    torch.testing.assert_close(cache["blocks.0.attn.hook_q"], q)
    # Each head's result through its slice of proj, summed over heads plus the bias, is the attention output.
    result = cache["blocks.0.attn.hook_result"]  # (B, N, H, C)
    torch.testing.assert_close(result.sum(2) + block.attn.proj.bias, cache["blocks.0.hook_attn_out"])
    torch.testing.assert_close(
        cache["blocks.0.hook_resid_mid"], cache["blocks.0.hook_resid_pre"] + cache["blocks.0.hook_attn_out"]
    )
    torch.testing.assert_close(F.gelu(cache["blocks.0.mlp.hook_pre"]), cache["blocks.0.mlp.hook_post"])
    stacked = cache.stack("attn.hook_pattern")  # (layers, B, H, N, M), block order
    assert stacked.shape == (2, 2, 4, 5, 5) and torch.equal(stacked[1], cache["blocks.1.attn.hook_pattern"])


@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_norm_hooks_read_and_replace_the_scale(kind: str) -> None:
    """hook_scale is sqrt(var + eps) (RMSNorm: sqrt(mean square + eps)), hook_normalized the input over it before
    the learned affine; hooked or not, the output is the fused kernel's; a replaced scale divides the input."""
    torch.manual_seed(0)
    norm = LayerNorm(8, eps=1e-5) if kind == "layer" else RMSNorm(8, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        if kind == "layer":
            norm.bias.normal_()
    x = 3 * torch.randn(2, 5, 8) + 1
    plain = norm(x)
    out, cache = run_with_cache(norm, x)
    torch.testing.assert_close(out, plain)
    centred = x - x.mean(-1, keepdim=True) if kind == "layer" else x
    scale = (centred.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()  # (2, 5, 1)
    torch.testing.assert_close(cache["hook_scale"], scale)
    torch.testing.assert_close(cache["hook_normalized"], centred / scale)
    frozen = run_with_hooks(norm, x, fwd_hooks=[("hook_scale", lambda s, hook: torch.full_like(s, 2.0))])
    shift = norm.bias if kind == "layer" else 0
    torch.testing.assert_close(frozen, centred / 2 * norm.weight + shift)


def test_a_hook_replaces_an_activation_downstream() -> None:
    model, x = tiny(), torch.randn(2, 5, 16)

    def zero_head_1(z, hook):  # (B, N, H, D)
        z = z.clone()
        z[:, :, 1] = 0
        return z

    patched = run_with_hooks(model, x, fwd_hooks=[("blocks.0.attn.hook_z", zero_head_1)])
    with torch.no_grad():  # the same ablation in the weights: head 1's columns of the output projection zeroed
        model.blocks[0].attn.proj.weight[:, 4:8] = 0
    torch.testing.assert_close(patched, model(x))
    assert not torch.allclose(patched, tiny()(x))
    out = run_with_hooks(model, x, fwd_hooks=[("blocks.1.hook_resid_post", lambda r, hook: torch.zeros_like(r))])
    assert torch.equal(out, torch.zeros(2, 5, 16))


def test_hooks_are_removed_on_exit_and_when_the_forward_raises() -> None:
    model, x = tiny(), torch.randn(1, 3, 16)

    def boom(t, hook):
        raise RuntimeError(f"stop at {hook.name}")

    with pytest.raises(RuntimeError, match=r"stop at blocks\.0\.mlp\.hook_post"):
        run_with_hooks(model, x, fwd_hooks=[("blocks.0.mlp.hook_post", boom)])
    run_with_cache(model, x, names_filter=lambda name: "attn" in name)
    with hooks(model, [(lambda name: True, lambda t, hook: None)]):
        assert all(point.active() for point in hook_points(model).values())
    assert not any(point.active() for point in hook_points(model).values())


def test_bad_names_and_bad_replacements_are_one_line_errors() -> None:
    model, x = tiny(), torch.randn(1, 3, 16)
    with pytest.raises(ValueError, match=r"no hook point 'blocks.0.hook_q'.*blocks.0.attn.hook_q"):
        run_with_hooks(model, x, fwd_hooks=[("blocks.0.hook_q", lambda t, hook: None)])
    with pytest.raises(ValueError, match=r"hook on blocks.0.hook_resid_mid returned \(1, 16\); .* \(1, 3, 16\)"):
        run_with_hooks(model, x, fwd_hooks=[("blocks.0.hook_resid_mid", lambda t, hook: t[:, 0])])
    assert not any(point.active() for point in hook_points(model).values())


def test_hooked_training_gives_the_gradients_of_the_unhooked_fast_paths() -> None:
    """hook_post turns off the recomputed activation, hook_pattern the fused kernel: same loss, same gradients."""
    torch.manual_seed(0)
    mlp, attn, x = Mlp(8, 32).train(), Attention(8, heads=2).train(), torch.randn(2, 5, 8)

    def grads(hooked: bool) -> list[torch.Tensor]:
        mlp.zero_grad(), attn.zero_grad()
        names = ["mlp.hook_post", "attn.hook_pattern"] if hooked else []
        model = torch.nn.ModuleDict({"mlp": mlp, "attn": attn})
        with hooks(model, [(names, lambda t, hook: None)]):
            mlp(attn(x, causal=True)).square().sum().backward()
        return [p.grad.clone() for p in (*mlp.parameters(), *attn.parameters())]

    for fast, hooked in zip(grads(False), grads(True), strict=True):
        torch.testing.assert_close(hooked, fast, rtol=1e-5, atol=1e-6)
