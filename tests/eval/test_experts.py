"""eval.experts: BTM merge, task-subnetwork extraction and the side-by-side comparison, on tiny GATO runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eval import control as eval_control
from eval import experts
from multimodal import load_checkpoint
from multimodal.evaluation.experts import active_parameters, expert_load
from tests.models.test_gato import sample_batch, tiny
from tests.training.test_gato_task import recipe, tiny_control_card
from training.config import TrainConfig
from training.train import train


@pytest.fixture(scope="module")
def runs(tiny_shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Dense, task-MoE and DEMix runs on shapes + CartPole, and two BTM branches of the dense run."""
    root = tmp_path_factory.mktemp("experts")
    cards = {"tiny-cartpole": tiny_control_card(root, "CartPole-v1", "tiny-cartpole")}
    names = ["tiny-shapes", "tiny-cartpole"]
    out = {}
    for label, args in {
        "dense": {},
        "task-moe": {"mlp": "task_moe", "moe": {"num_experts": 2}, "tasks": names},
        "demix": {"mlp": "demix", "tasks": names},
    }.items():
        cfg = recipe(tiny_shapes, cards, root / label, steps=2, checkpoint_every=2)
        cfg["model"]["args"] |= args
        train(TrainConfig.from_dict(cfg))
        out[label] = root / label
    for name, key in (("shapes", str(tiny_shapes)), ("cartpole", str(cards["tiny-cartpole"]))):
        cfg = recipe(tiny_shapes, cards, root / f"branch-{name}", steps=2, checkpoint_every=2)
        cfg["task"]["mixture"] = {key: 1.0}
        cfg["model"]["init_from"] = str(root / "dense")
        train(TrainConfig.from_dict(cfg))
        out[f"branch-{name}"] = root / f"branch-{name}"
    return out


def test_merge_writes_the_parameter_average_as_a_run(runs: dict[str, Path], tmp_path: Path) -> None:
    branches = [str(runs["branch-shapes"]), str(runs["branch-cartpole"])]
    out = tmp_path / "average"
    assert experts.main(["merge", "--branch", branches[0], "--branch", branches[1], "--out", str(out)]) == 0
    merged = load_file(out / "model.safetensors")
    a, b = (load_file(Path(p) / "model.safetensors") for p in branches)
    for key, value in merged.items():
        torch.testing.assert_close(value, (a[key] + b[key]) / 2)
    assert eval_control.main(["--checkpoint", str(out), "--episodes", "1"]) == 0  # a run like any other
    assert experts.main(["merge", "--branch", branches[0], "--branch", branches[1], "--out", str(out)]) == 2
    assert experts.main(["merge", "--branch", branches[0], "--out", str(tmp_path / "one")]) == 2
    assert not (tmp_path / "one").exists()


def test_extract_writes_a_dense_run_with_the_same_logits(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cartpole"
    assert (
        experts.main(["extract", "--checkpoint", str(runs["task-moe"]), "--task", "tiny-cartpole", "--out", str(out)])
        == 0
    )
    full, dense = load_checkpoint(runs["task-moe"]), load_checkpoint(out)
    assert dense.cfg.mlp == "gelu" and dense.cfg.tasks == ("tiny-cartpole",)
    batch = {
        "tokens": torch.randint(0, 2, (2, 10)),
        "modality": torch.full((2, 10), 2),
        "local_position": torch.full((2, 10), -1),
        "loss_mask": torch.ones(2, 10, dtype=torch.bool),
        "timestep": torch.zeros(2, 10, dtype=torch.long),
        "padding_mask": torch.ones(2, 10, dtype=torch.bool),
    }
    expected = full({**batch, "task": torch.ones(2, dtype=torch.long)})
    torch.testing.assert_close(dense(batch), expected, atol=1e-5, rtol=0)
    assert eval_control.main(["--checkpoint", str(out), "--episodes", "1"]) == 0
    assert (
        experts.main(
            ["extract", "--checkpoint", str(runs["dense"]), "--task", "tiny-cartpole", "--out", str(tmp_path / "x")]
        )
        == 2
    )
    assert (
        experts.main(
            ["extract", "--checkpoint", str(runs["task-moe"]), "--task", "acrobot", "--out", str(tmp_path / "x")]
        )
        == 2
    )
    assert not (tmp_path / "x").exists()


def test_compare_scores_and_measures_every_system(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "experts.json"
    argv = ["compare", "--episodes", "1", "--samples", "4", "--out", str(out)]
    for label in ("dense", "task-moe", "demix"):
        argv += ["--run", f"{label}={runs[label]}"]
    argv += [
        "--ensemble",
        f"btm={runs['branch-shapes']},{runs['branch-cartpole']}",
        "--single",
        str(runs["branch-cartpole"]),
    ]
    assert experts.main(argv) == 0
    systems = json.loads(out.read_text())["systems"]
    assert set(systems) == {"dense", "task-moe", "demix", "demix (task unknown)", "btm", "single-task"}
    tasks = {"tiny-shapes", "tiny-shapes (heldout)", "tiny-cartpole"}
    assert all(
        set(systems[s]["scores"]) == tasks for s in ("dense", "task-moe", "demix", "demix (task unknown)", "btm")
    )
    assert set(systems["single-task"]["scores"]) == {"tiny-cartpole"}
    dense_params = systems["dense"]["active_parameters"]
    assert systems["btm"]["active_parameters"] == 2 * dense_params and systems["btm"]["train_tokens_per_s"] is None
    assert (
        systems["task-moe"]["active_parameters"] == dense_params + 2 * 4
    )  # top-1 of 2 experts, plus a 2x2 gate a block
    assert systems["demix"]["active_parameters"] == dense_params
    assert len(systems["task-moe"]["expert_load"]) == 2 and all(
        sum(load) == 1 for load in systems["task-moe"]["expert_load"]
    )
    sub = systems["task-moe"]["subnetworks"]["tiny-cartpole"]
    assert sub["parameters"] == dense_params and sub["infer_tokens_per_s"] > 0 and sub["full_infer_tokens_per_s"] > 0
    assert systems["dense"]["train_tokens_per_s"] > 0 and systems["dense"]["infer_tokens_per_s"] > 0


def test_active_parameters_and_token_load_by_hand() -> None:
    """A token-MoE GATO counts top_k of its experts; the load is the share of real tokens each expert takes."""
    dense, moe = tiny(), tiny(mlp="moe", moe={"num_experts": 3, "capacity_factor": None}, moe_every=2)
    expert = sum(p.numel() for p in moe.transformer.blocks[1].mlp.experts[0].parameters())
    router = moe.transformer.blocks[1].mlp.router.weight.numel()
    assert active_parameters(moe) == active_parameters(dense) + router
    assert sum(p.numel() for p in moe.parameters()) == active_parameters(moe) + 2 * expert
    batch = sample_batch()
    load = expert_load(moe, {"mixed": batch})
    moe(batch)
    first = moe.transformer.blocks[1].mlp.last_expert_index[:, 0][batch["padding_mask"].reshape(-1)]
    assert load == [(torch.bincount(first, minlength=3) / first.numel()).tolist()]
    assert expert_load(dense, {"mixed": batch}) is None
