"""The GATO task: batch shares, the prompt-and-window layout, resumable batches, and a run that trains and
evaluates end to end (configs/gato/mixed.yaml in miniature)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from eval import caption as eval_caption
from eval import control as eval_control
from multimodal.config import ConfigError
from multimodal.data import load_card
from multimodal.data.control import generate_control
from multimodal.tokenizers import SubsetTokenizer
from multimodal.tokenizers.gato import Modality
from tests.conftest import REPO, launch
from training.config import TrainConfig
from training.tasks.gato import GatoTask, split_batch
from training.train import train


def test_split_batch_shares_by_largest_remainder() -> None:
    assert split_batch({"shapes": 0.4, "cartpole": 0.2, "pendulum": 0.4}, 32) == {
        "shapes": 13, "cartpole": 6, "pendulum": 13,
    }  # fmt: skip
    assert split_batch({"a": 1, "b": 1000}, 4) == {"a": 1, "b": 3}  # every dataset keeps a sequence
    with pytest.raises(ValueError, match="empty"):
        split_batch({}, 8)
    with pytest.raises(ValueError, match="> 0"):
        split_batch({"a": 0.0}, 8)
    with pytest.raises(ValueError, match="cannot hold"):
        split_batch({"a": 1, "b": 1, "c": 1}, 2)


def tiny_control_card(root: Path, env_id: str, name: str) -> Path:
    """A small demonstration set of ``env_id`` (12 train, 3 test episodes) and its card."""
    args = {"env_id": env_id, "episodes": 12, "test_episodes": 3, "reference_episodes": 10}
    manifest = generate_control(root / name, **args)
    card = {
        "name": name,
        "generator": "control",
        "generator_args": args,
        "root": str(root / name),
        "splits": {s: {"shards": i["shards"], "num_samples": i["num_samples"]} for s, i in manifest["splits"].items()},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(card))
    return path


@pytest.fixture(scope="module")
def control_cards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small CartPole and Pendulum demonstration sets with their cards."""
    root = tmp_path_factory.mktemp("control")
    return {name: tiny_control_card(root, env_id, name)
            for env_id, name in (("CartPole-v1", "tiny-cartpole"), ("Pendulum-v1", "tiny-pendulum"))}  # fmt: skip


def recipe(tiny_shapes: Path, control_cards: dict[str, Path], out_dir: Path, **train_overrides) -> dict:
    return {
        "run": {"name": "tiny-gato", "out_dir": str(out_dir), "seed": 0},
        "task": {
            "name": "gato",
            "mixture": {str(tiny_shapes): 0.5, **{str(p): 0.25 for p in control_cards.values()}},
            "prompt_prob": 0.5,
            "eval_episodes": 2,
            "eval_samples": 16,
            "text_vocabulary": "captions",
        },
        "model": {
            "name": "gato_nano",
            "args": {
                "dim": 32,
                "depth": 2,
                "heads": 2,
                "context_length": 48,
                "patch_channels": 8,
                "patch_groups": 4,
                "text_vocab_size": 1024,
            },
        },
        "data": {
            "dataset": str(tiny_shapes),
            "image_size": 32,
            "batch_size": 8,
            "num_workers": 0,
            "shuffle_buffer": 32,
            "caption_sampling": "random",
        },
        "optim": {"lr": 3e-3, "warmup_steps": 2, "schedule": "cosine"},
        "train": {"steps": 6, "log_every": 2, "eval_every": 0, "checkpoint_every": 3, **train_overrides},
    }


def test_control_sequences_are_a_prompt_from_another_episode_then_a_window(
    tiny_shapes: Path, control_cards: dict[str, Path], tmp_path: Path
) -> None:
    cfg = TrainConfig.from_dict(recipe(tiny_shapes, control_cards, tmp_path / "run"))
    task = GatoTask(cfg.replace(task={"prompt_prob": 1.0}))
    tokenizer = task.tokenizer(task.build_model())
    per_step = 6  # CartPole: 4 observation values, '|', 1 action; context 48 -> a 4-step prompt and 4 steps
    episodes = task.episode_tokens("tiny-cartpole", tokenizer)
    rng = np.random.default_rng(0)
    for _ in range(20):
        seq = task.control_sequence(episodes, "tiny-cartpole", 48, rng)
        assert len(seq) == 48
        # Whole timesteps: every timestep starts with local position 0 and ends with its action.
        assert seq.local_position.view(-1, per_step)[:, 0].tolist() == [0] * 8
        assert (seq.modality.view(-1, per_step)[:, -1] == Modality.DISCRETE).all()
        prompt, window = seq.tokens[:24], seq.tokens[24:]
        source = [i for i, e in enumerate(episodes) if _contains(e.tokens, window)]
        assert source and not any(_contains(episodes[i].tokens, prompt) for i in source)
    without = GatoTask(cfg.replace(task={"prompt_prob": 0.0}))
    seq = without.control_sequence(episodes, "tiny-cartpole", 48, rng)
    assert len(seq) == 48 and any(_contains(e.tokens, seq.tokens) for e in episodes)


def _contains(haystack: torch.Tensor, needle: torch.Tensor) -> bool:
    return any(torch.equal(w, needle) for w in haystack.unfold(0, len(needle), 6))


def test_batches_hold_every_dataset_and_replay_on_resume(
    tiny_shapes: Path, control_cards: dict[str, Path], tmp_path: Path
) -> None:
    cfg = TrainConfig.from_dict(recipe(tiny_shapes, control_cards, tmp_path / "run"))
    task = GatoTask(cfg)
    model = task.build_model()
    stream = iter(task.train_batches(model, 0))
    batches = [next(stream) for _ in range(3)]
    assert set(batches[0]["parts"]) == {"tiny-shapes", "tiny-cartpole", "tiny-pendulum"}
    assert batches[0]["size"] == 8 and [p["tokens"].shape[0] for p in batches[0]["parts"].values()] == [4, 2, 2]
    resumed = next(iter(task.train_batches(model, 2)))
    for name, part in batches[2]["parts"].items():
        for key, value in part.items():
            assert torch.equal(resumed["parts"][name][key], value), (name, key)


def test_a_tiny_run_trains_and_evaluates(
    tiny_shapes: Path, control_cards: dict[str, Path], tmp_path: Path, offline: None
) -> None:
    out = tmp_path / "run"
    result = train(TrainConfig.from_dict(recipe(tiny_shapes, control_cards, out, steps=6, eval_every=6)))
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [h["train/loss"] for h in history if "train/loss" in h]
    assert losses[-1] < losses[0]
    assert {"train/tiny-shapes_loss", "train/tiny-cartpole_acc", "train/tiny-pendulum_loss"} <= set(history[0])
    assert 0 < result["eval/tiny-cartpole_return"] <= 500 and 0.0 <= result["eval/tiny-shapes_caption_acc"] <= 1.0
    assert np.isfinite(result["eval/tiny-pendulum_score"])
    saved = json.loads((out / "gato_tokenizer.json").read_text())  # the captions' BPE tokens, renumbered
    assert saved["text"]["kind"] == "bpe_subset" and "circle</w>" in saved["text"]["tokens"]
    assert 20 < len(saved["text"]["tokens"]) < 200 and saved["text_vocab_size"] == 1024

    # The command-line evaluations read the run back.
    assert eval_control.main(["--checkpoint", str(out), "--episodes", "2"]) == 0
    control = json.loads((out / "eval" / "control.json").read_text())["results"]
    assert set(control) == {"CartPole-v1", "Pendulum-v1"} and len(control["CartPole-v1"]["returns"]) == 2
    assert eval_control.main(["--checkpoint", str(out), "--episodes", "1", "--env", "CartPole-v1"]) == 0
    alone = json.loads((out / "eval" / "control.json").read_text())["results"]
    assert set(alone) == {"CartPole-v1"}  # from the run's own card (its references), not the standard one
    assert alone["CartPole-v1"]["references"] == control["CartPole-v1"]["references"]
    assert eval_caption.main(["--checkpoint", str(out), "--samples", "8"]) == 0
    captions = json.loads((out / "eval" / "caption_tiny-shapes.json").read_text())["results"]["test"]
    assert captions["n"] == 8 and 0.0 <= captions["accuracy"] <= 1.0


def test_acrobot_joins_the_mixture_and_is_rolled_out(tiny_shapes: Path, tmp_path: Path, offline: None) -> None:
    """A third control task needs nothing but its card: 6 observation values and 3 discrete actions."""
    cards = {"tiny-acrobot": tiny_control_card(tmp_path, "Acrobot-v1", "tiny-acrobot")}
    out = tmp_path / "run"
    result = train(TrainConfig.from_dict(recipe(tiny_shapes, cards, out, steps=4, eval_every=4)))
    assert -500 <= result["eval/tiny-acrobot_return"] <= 0 and np.isfinite(result["eval/tiny-acrobot_score"])
    assert eval_control.main(["--checkpoint", str(out), "--episodes", "2"]) == 0
    rolled = json.loads((out / "eval" / "control.json").read_text())["results"]["Acrobot-v1"]
    assert len(rolled["returns"]) == 2 and all(-500 <= r <= 0 for r in rolled["returns"])


def test_a_pixel_task_trains_from_its_images_and_is_rolled_out(
    tiny_shapes: Path, tmp_path: Path, offline: None
) -> None:
    """MiniGrid DoorKey from pixels: every observation token of its sequences is an image patch of the agent's
    view (no state), the run trains, and the agent acts on rendered frames."""
    cards = {"tiny-doorkey": tiny_control_card(tmp_path, "MiniGrid-DoorKey-5x5-v0", "tiny-doorkey")}
    cfg = TrainConfig.from_dict(recipe(tiny_shapes, cards, tmp_path / "run", steps=4, eval_every=4))
    task = GatoTask(cfg)
    batch = next(iter(task.train_batches(task.build_model(), 0)))["parts"]["tiny-doorkey"]
    observed = batch["padding_mask"] & (batch["local_position"] >= 0)  # observation tokens
    assert observed.any() and (batch["modality"][observed] == Modality.IMAGE).all()
    assert batch["patches"].shape[2:] == (3, 16, 16) and set(batch["local_position"][observed].tolist()) == set(
        range(9)
    )
    result = train(cfg)
    assert 0 <= result["eval/tiny-doorkey_return"] <= 1 and np.isfinite(result["eval/tiny-doorkey_score"])
    assert eval_control.main(["--checkpoint", str(tmp_path / "run"), "--episodes", "2"]) == 0
    rolled = json.loads((tmp_path / "run" / "eval" / "control.json").read_text())["results"]["MiniGrid-DoorKey-5x5-v0"]
    assert len(rolled["returns"]) == 2


@pytest.mark.parametrize("images", [True, False], ids=["captions-and-control", "control-only"])
def test_two_ddp_processes_keep_equal_replicas_when_a_part_leaves_the_patch_encoder_unused(
    tiny_shapes: Path, control_cards: dict[str, Path], tmp_path: Path, images: bool
) -> None:
    """A control part never reaches the image patch encoder; DDP must still reduce every gradient (it raised
    "Expected to have finished reduction" before the task asked it to find unused parameters)."""
    cfg = recipe(tiny_shapes, control_cards, tmp_path / "run", steps=4, checkpoint_every=0)
    cfg["data"]["eval_split"] = None
    if not images:
        cfg["task"]["mixture"] = {str(card): 0.5 for card in control_cards.values()}
    launch(cfg, tmp_path, str(tmp_path / "weights"), module="tests.training.ddp_probe")
    initial, *final = (
        load_file(tmp_path / "weights" / f"{n}.safetensors") for n in ("initial-0", "final-0", "final-1")
    )
    assert all(torch.equal(final[0][k], final[1][k]) for k in initial)  # replicas equal: every gradient reduced
    moved = {k for k in initial if not torch.equal(initial[k], final[0][k])}
    patch = {k for k in initial if k.startswith(("patch_embed.", "patch_row.", "patch_col."))}
    assert moved == (set(initial) if images else set(initial) - patch)  # no gradient, no update


@pytest.mark.parametrize(
    "recipe_name, datasets",
    [
        ("mixed", {"shapes", "cartpole", "pendulum"}),
        ("mixed-fast", {"shapes", "cartpole-dart", "pendulum"}),
        ("six-tasks", {"shapes", "cartpole", "pendulum", "acrobot", "doorkey-5x5", "multiroom-n2-s4"}),
    ],
)
def test_the_recipes_load(recipe_name: str, datasets: set[str]) -> None:
    cfg = TrainConfig.load(REPO / "configs" / "gato" / f"{recipe_name}.yaml")
    assert cfg.task.name == "gato" and set(cfg.task.mixture) == datasets
    assert abs(sum(cfg.task.mixture.values()) - 1.0) < 1e-9
    assert all(load_card(name).name == name for name in datasets)  # every share names a card of datasets/


def test_the_text_vocabulary_is_the_whole_bpe_or_the_training_captions(
    tiny_shapes: Path, control_cards: dict[str, Path], tmp_path: Path
) -> None:
    cfg = TrainConfig.from_dict(recipe(tiny_shapes, control_cards, tmp_path / "run"))
    task = GatoTask(cfg)
    texts = task.caption_texts("train")
    assert len(texts) > len(set(texts)) > 10 and all(isinstance(t, str) and t for t in texts)
    model = task.build_model()
    subset = task.tokenizer(model).text
    assert subset.vocab_size == len(SubsetTokenizer.from_texts(texts).tokens) < 200
    assert model.cfg.vocab_size == 1024 + 1024 + 1
    whole = GatoTask(cfg.replace(task={"text_vocabulary": "bpe"}, model={"args": {"text_vocab_size": 49408}}))
    tokenizer = whole.tokenizer(whole.build_model())
    assert tokenizer.text_vocab_size == 49408 and tokenizer.text.vocab_size == 49408
    small = GatoTask(cfg.replace(model={"args": {"text_vocab_size": 512}}))
    with pytest.raises(ConfigError, match=r"text_vocab_size=512 cannot hold .* set it to at least 1024"):
        small.tokenizer(small.build_model())


@pytest.mark.parametrize("mlp", ["task_moe", "demix"])
def test_task_routed_experts_train_on_their_task_ids_and_evaluate(
    tiny_shapes: Path,
    control_cards: dict[str, Path],
    tmp_path: Path,
    offline: None,
    capsys: pytest.CaptureFixture,
    mlp: str,
) -> None:
    """Each dataset's sequences carry its task id; the CLIs route by label, and DEMix also by posterior."""
    cfg = recipe(tiny_shapes, control_cards, tmp_path / "run", steps=4, eval_every=4)
    names = ["tiny-shapes", "tiny-cartpole", "tiny-pendulum"]
    cfg["model"]["args"] |= {"mlp": mlp, "moe": {"num_experts": 3} if mlp == "task_moe" else None, "tasks": names}
    task = GatoTask(TrainConfig.from_dict(cfg))
    parts = next(iter(task.train_batches(task.build_model(), 0)))["parts"]
    assert {name: part["task"].unique().tolist() for name, part in parts.items()} == {
        n: [i] for i, n in enumerate(names)
    }
    result = train(TrainConfig.from_dict(cfg))
    assert np.isfinite(result["eval/tiny-pendulum_score"]) and 0 <= result["eval/tiny-shapes_caption_acc"] <= 1
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    aux = [h.get("train/aux_loss") for h in history if "train/loss" in h]  # task MoE balances its routing
    assert all(a >= 1 - 1e-6 for a in aux) if mlp == "task_moe" else aux == [None] * len(aux)
    how = ["label", "posterior"] if mlp == "demix" else ["label"]
    for routing in how:
        assert eval_control.main(["--checkpoint", str(tmp_path / "run"), "--episodes", "2", "--task", routing]) == 0
        assert eval_caption.main(["--checkpoint", str(tmp_path / "run"), "--samples", "4", "--task", routing]) == 0
    if mlp == "task_moe":
        assert eval_control.main(["--checkpoint", str(tmp_path / "run"), "--episodes", "1", "--task", "posterior"])
        assert "--task posterior mixes DEMix experts" in capsys.readouterr().err
    cfg["model"]["args"]["tasks"] = names[:2]
    with pytest.raises(ConfigError, match=r"lacks \['tiny-pendulum'\]"):
        GatoTask(TrainConfig.from_dict(cfg)).build_model()


def test_a_branch_starts_from_the_seed_run_and_keeps_its_tokenizer(
    tiny_shapes: Path, control_cards: dict[str, Path], tmp_path: Path, offline: None
) -> None:
    """Branch-Train-Merge's branch: model.init_from the seed run, one task of the mixture, the seed's tokenizer
    (a control-only mixture has no captions to build a caption vocabulary from)."""
    seed_cfg = recipe(tiny_shapes, control_cards, tmp_path / "seed", steps=2, eval_every=0)
    train(TrainConfig.from_dict(seed_cfg))
    branch = recipe(tiny_shapes, control_cards, tmp_path / "branch", steps=2, eval_every=2)
    branch["task"]["mixture"] = {str(control_cards["tiny-cartpole"]): 1.0}
    branch["model"]["init_from"] = str(tmp_path / "seed")
    task = GatoTask(TrainConfig.from_dict(branch))
    start = task.build_model().state_dict()
    seed_weights = load_file(tmp_path / "seed" / "model.safetensors")
    assert all(torch.equal(start[k], v) for k, v in seed_weights.items())
    result = train(TrainConfig.from_dict(branch))
    assert 0 < result["eval/tiny-cartpole_return"] <= 500
    tokenizer = json.loads((tmp_path / "branch" / "gato_tokenizer.json").read_text())
    assert tokenizer == json.loads((tmp_path / "seed" / "gato_tokenizer.json").read_text())
    branch["model"]["args"]["depth"] = 1
    with pytest.raises(ConfigError, match=r"model\.init_from=.*do not fit model 'gato_nano'"):
        GatoTask(TrainConfig.from_dict(branch)).build_model()
    branch["model"]["init_from"] = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="not a run directory"):
        GatoTask(TrainConfig.from_dict(branch)).build_model()
