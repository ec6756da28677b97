"""bench/profile_step.py: the split of a profiled step adds up, FLOPs are counted exactly, a recipe profiles end to
end, and a bad recipe key is refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from bench.profile_step import ORDER, main, op_kind, split_profile
from tests.conftest import tiny_recipe, write_recipe


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("aten::addmm", "matmul"),
        ("aten::mm", "matmul"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu_backward", "attention"),
        ("aten::convolution_backward", "conv"),
        ("aten::native_layer_norm_backward", "norm"),
        ("aten::gelu_backward", "activation"),
        ("aten::_softmax_backward_data", "softmax/loss"),
        ("aten::mul", "elementwise"),
        ("aten::copy_", "copy"),
        ("aten::view", "views/alloc"),
        ("autograd::engine::evaluate_function: MmBackward0", "autograd"),
        ("MmBackward0", "autograd"),
        ("cudaDeviceSynchronize", "python/other"),
    ],
)
def test_ops_are_sorted_by_kind(name, kind):
    assert op_kind(name) == kind


def test_a_linear_step_is_split_into_parts_that_add_up_with_its_exact_flops():
    torch.manual_seed(0)
    model = nn.Linear(64, 32)
    optimizer = torch.optim.AdamW(model.parameters())
    x = torch.randn(16, 64)
    steps = 3
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for _ in range(steps):
            with record_function("data"):
                batch = x.clone()
            model(batch).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    split, flops, matmul_seconds = split_profile(prof, steps, wall_seconds=10.0)
    assert list(split) == list(ORDER)
    assert sum(split.values()) == pytest.approx(10.0 / steps, rel=1e-9)  # python/other takes up the rest of the wall
    # forward (addmm) 2*16*64*32, backward: the gradient of the weight (mm) as much again; the input needs none
    assert flops == 2 * (2 * 16 * 64 * 32)
    assert matmul_seconds > 0 and split["matmul"] >= matmul_seconds
    assert split["data"] > 0 and split["optimizer"] > 0  # the labelled regions, whatever ops ran inside them
    assert all(v >= 0 for v in split.values())


def test_a_recipe_is_profiled_end_to_end(tiny_shapes, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tiny_shapes, tmp_path / "unused"))
    out = tmp_path / "profile.json"
    assert main([str(recipe), "data.num_workers=0", "--warmup", "1", "--steps", "2", "--ceiling-size", "64",
                 "--json", str(out)]) == 0  # fmt: skip
    report = json.loads(out.read_text())
    assert report["model"] == "vitc_nano_patch8_32" and report["precision"] == "fp32"
    split = report["step_split_seconds"]
    assert sum(split.values()) == pytest.approx(report["profiled_step_seconds"], rel=1e-6)
    assert split["matmul"] > 0 and split["conv"] > 0 and split["optimizer"] > 0  # a ViT with a conv stem, AdamW
    assert report["matmul_gflop_per_step"] > 0 and set(report["ceiling_gflops"]) == {"fp32", "bf16"}
    assert report["eval_seconds"] > 0 and report["startup_seconds"]["setup"] > 0
    assert not (tmp_path / "unused").exists()  # the run lives in a temporary directory, removed afterwards
    top = [op["ms"] for op in report["top_ops"]]
    assert (
        0 < len(top) <= 10 and top == sorted(top, reverse=True) and sum(top) <= report["profiled_step_seconds"] * 1e3
    )
    assert "ops of most self time" in capsys.readouterr().out


def test_a_bad_key_is_refused_in_one_line(tiny_shapes, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tiny_shapes, tmp_path / "run"))
    assert main([str(recipe), "optim.lrr=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "optim.lrr" in err and "\n" not in err
