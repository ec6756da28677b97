"""bench/hook_overhead.py counts the hook-point calls of a step: seven per block with no hook attached, and eleven
checks."""

from __future__ import annotations

import torch

from bench.hook_overhead import count_calls, per_call_seconds
from multimodal.nn import Transformer


def test_a_step_calls_seven_hook_points_per_block_and_checks_eleven() -> None:
    model, x = Transformer(16, 3, heads=2), torch.randn(2, 4, 16)
    calls, checks = count_calls(lambda: model(x).sum().backward())
    # called: resid_pre, attn_out, resid_mid, mlp_out, resid_post, attn.hook_z, mlp.hook_pre;
    # asked active(): attn.hook_q, hook_k, hook_v, hook_attn_scores, hook_pattern, hook_result, mlp.hook_post,
    # and each of norm1 and norm2: hook_scale, hook_normalized
    assert (calls, checks) == (3 * 7, 3 * 11)
    call, check = per_call_seconds(repeats=1, calls=100)
    assert 0 < check < 1e-3 and 0 < call < 1e-3  # seconds per call
