"""training.optim: weight-decay groups and the learning-rate schedule."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import multimodal
from multimodal.config import ConfigError
from training.config import OptimConfig, TrainConfig
from training.optim import build_optimizer, build_scheduler, lr_factor, param_groups


def test_no_decay_on_norms_biases_and_tokens():
    model = multimodal.create_model("vit_nano_patch4_32", depth=1, dim=32, heads=2, num_classes=3)
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = param_groups(model, 0.1)
    decayed = sorted(names[id(p)] for p in decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decayed == sorted(
        [
            "head.weight",
            "patch_embed.proj.weight",
            "transformer.blocks.0.attn.qkv.weight",
            "transformer.blocks.0.attn.proj.weight",
            "transformer.blocks.0.mlp.fc1.weight",
            "transformer.blocks.0.mlp.fc2.weight",
        ]
    )
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_warmup_then_cosine_to_min_ratio():
    f = lambda s: lr_factor(s, total=110, warmup=10, schedule="cosine", min_ratio=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.1)
    assert lr_factor(55, total=110, warmup=10, schedule="linear", min_ratio=0.0) == pytest.approx(1 - 45 / 100)
    assert lr_factor(99, total=110, warmup=0, schedule="constant", min_ratio=0.0) == 1.0


def test_wsd_holds_the_lr_then_decays_linearly_over_the_last_fraction():
    f = lambda s: lr_factor(s, total=110, warmup=10, schedule="wsd", min_ratio=0.1, decay_fraction=0.2)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert [f(s) for s in (10, 50, 89)] == [1.0, 1.0, 1.0]  # stable: 100 steps after warmup, the last 20 decay
    assert f(90) == pytest.approx(0.1 + 0.9 * 19 / 20)
    assert f(99) == pytest.approx(0.1 + 0.9 * 10 / 20)
    assert f(109) == pytest.approx(0.1)  # the last step is at min_lr_ratio


def test_decay_fraction_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match=r"optim\.decay_fraction must be in"):
        TrainConfig.from_dict({"optim": {"schedule": "wsd", "decay_fraction": 0.0}})


def test_scheduler_drives_optimizer_lr():
    model = torch.nn.Linear(2, 2)
    cfg = OptimConfig(lr=0.5, warmup_steps=2, schedule="linear")
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.25, 0.5, 0.5]) and lrs[-1] == pytest.approx(0.5 * (1 - 7 / 8))


def test_fused_adamw_by_default_and_same_update_as_the_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4))
    loop_model = copy.deepcopy(model)
    fused = build_optimizer(model, OptimConfig(lr=1e-2, weight_decay=0.1))
    loop = build_optimizer(loop_model, OptimConfig(lr=1e-2, weight_decay=0.1, fused=False))
    assert fused.defaults["fused"] and not loop.defaults["fused"]
    x = torch.randn(32, 8)
    for _ in range(5):
        for m, opt in ((model, fused), (loop_model, loop)):
            m(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(model.parameters(), loop_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_lr_mult_gives_a_prefix_its_own_learning_rate_through_the_schedule():
    model = multimodal.create_model("stn", model="vit_nano_patch4_32", depth=1, dim=32, heads=2, num_classes=3)
    cfg = OptimConfig(lr=1e-3, warmup_steps=2, lr_mult={"st.": 0.1, "st.localisation.regressor.2.": 0.5})
    opt = build_optimizer(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    lr_of = {names[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lr_of["st.localisation.features.0.weight"] == pytest.approx(1e-4)
    assert lr_of["st.localisation.regressor.2.bias"] == pytest.approx(5e-4)  # the longest prefix wins
    assert lr_of["backbone.head.weight"] == pytest.approx(1e-3) and len(lr_of) == len(names)
    decays = {names[id(p)]: g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert (
        decays["st.localisation.features.0.weight"] == cfg.weight_decay
        and decays["st.localisation.features.0.bias"] == 0
    )
    sched = build_scheduler(opt, cfg, total_steps=10)
    opt.step()  # no gradients: nothing moves
    sched.step()
    assert {round(g["lr"] / g["initial_lr"], 9) for g in opt.param_groups} == {1.0}  # warm-up done, every group alike
    with pytest.raises(ConfigError, match=r"optim.lr_mult: no parameter name starts with \['stn.'\]"):
        build_optimizer(model, OptimConfig(lr_mult={"stn.": 0.1}))
