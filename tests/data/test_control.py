import dataclasses
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from multimodal.config import ConfigError
from multimodal.data import control, ensure_dataset, load_card, shards
from multimodal.data.control import (
    ENVS,
    Episode,
    env_spec,
    expert_action,
    expert_policy,
    filter_episodes,
    generate_control,
    normalised_score,
    random_policy,
    read_episodes,
    run_episodes,
)
from multimodal.io import exclusive_lock

CARDS = Path(__file__).resolve().parents[2] / "datasets"
TINY = {"episodes": 3, "test_episodes": 2, "reference_episodes": 4}  # a dataset in a fraction of a second


def _returns(env_id: str, policy, seeds) -> np.ndarray:
    return np.array([e.total_return for e in run_episodes(env_id, policy, seeds)])


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_env_specs():
    cartpole, pendulum = env_spec("CartPole-v1"), env_spec("Pendulum-v1")
    assert (cartpole.action_kind, cartpole.observation_dim, cartpole.num_actions) == ("discrete", 4, 2)
    assert (pendulum.action_kind, pendulum.observation_dim) == ("continuous", 3)
    assert (pendulum.action_low, pendulum.action_high) == (-2.0, 2.0)
    assert (cartpole.max_steps, pendulum.max_steps) == (500, 200)
    assert cartpole.action_dim == pendulum.action_dim == 1
    doorkey = env_spec("MiniGrid-DoorKey-5x5-v0")
    assert doorkey.pixels and doorkey.observation_shape == (56, 56, 3) and doorkey.num_actions == 7
    assert not env_spec("CartPole-v1").pixels
    acrobot = env_spec("Acrobot-v1")
    acrobot_shape = (acrobot.action_kind, acrobot.observation_dim, acrobot.num_actions, acrobot.max_steps)
    assert acrobot_shape == ("discrete", 6, 3, 500)
    with pytest.raises(ValueError, match=r"unknown env 'MountainCar-v0'; known envs: CartPole-v1, Pendulum-v1, Acro"):
        env_spec("MountainCar-v0")


def test_expert_action_shapes():
    cart = expert_action("CartPole-v1", np.array([0.0, 0.0, 0.05, 0.0], np.float32))
    assert cart.shape == (1,) and cart.dtype == np.int64 and cart[0] == 1  # pole leans right: push right
    swing = expert_action("Pendulum-v1", np.array([-1.0, 0.0, 1.0], np.float32))  # at the bottom, turning
    assert swing.shape == (1,) and swing.dtype == np.float32 and swing[0] == 2.0  # pump energy along the motion
    hold = expert_action("Pendulum-v1", np.array([np.cos(0.1), np.sin(0.1), 0.0], np.float32))
    assert hold[0] == pytest.approx(-1.0, abs=1e-5)  # PD near upright: -(10 * 0.1 + 2 * 0)
    with pytest.raises(ValueError, match=r"must have shape \(N, 3\), got \(1, 4\)"):
        expert_action("Pendulum-v1", np.zeros(4))


def test_cartpole_expert_reaches_the_maximum():
    returns = _returns("CartPole-v1", expert_policy("CartPole-v1"), range(10))
    np.testing.assert_array_equal(returns, 500.0)


def test_pendulum_expert_swings_up():
    expert = _returns("Pendulum-v1", expert_policy("Pendulum-v1"), range(10))
    randoms = _returns("Pendulum-v1", random_policy("Pendulum-v1", 0), range(10))
    assert expert.mean() > -180  # measured -132.3 on these seeds (-152 over 500 evaluation seeds)
    assert expert.mean() > randoms.mean() + 800


def test_acrobot_expert_swings_up_where_random_torque_never_does():
    expert = _returns("Acrobot-v1", expert_policy("Acrobot-v1"), range(10))
    randoms = _returns("Acrobot-v1", random_policy("Acrobot-v1", 0), range(10))
    assert expert.mean() > -100 and expert.min() > -160  # measured -74.2, worst -95 on these seeds
    np.testing.assert_array_equal(randoms, -500.0)  # truncated at 500 steps, never above the bar
    pushes = expert_action("Acrobot-v1", np.array([1.0, 0.0, 1.0, 0.0, 0.0, 1.0], np.float32))
    assert pushes.dtype == np.int64 and pushes[0] == 2  # second joint turning forward: torque +1 along it


def test_random_baselines():
    cartpole = _returns("CartPole-v1", random_policy("CartPole-v1", 0), range(20))
    assert 12 < cartpole.mean() < 35  # measured 27.6; about 22 over many seeds
    pendulum = _returns("Pendulum-v1", random_policy("Pendulum-v1", 0), range(10))
    assert -1500 < pendulum.mean() < -900  # measured -1254; about -1200 over many seeds
    first = run_episodes("Pendulum-v1", random_policy("Pendulum-v1", 3), [5])[0]
    again = run_episodes("Pendulum-v1", random_policy("Pendulum-v1", 3), [5])[0]
    np.testing.assert_array_equal(first.actions, again.actions)  # seeded
    assert np.abs(first.actions).max() <= 2.0 and first.actions.dtype == np.float32


def test_normalised_score():
    assert normalised_score(-150.0, random=-1200.0, expert=-150.0) == 1.0
    assert normalised_score(-1200.0, random=-1200.0, expert=-150.0) == 0.0
    assert normalised_score(-675.0, random=-1200.0, expert=-150.0) == pytest.approx(0.5)
    assert normalised_score(260.0, random=20.0, expert=500.0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="equal"):
        normalised_score(1.0, random=5.0, expert=5.0)


def _episode(ret: float, seed: int) -> Episode:
    return Episode(np.zeros((2, 3), np.float32), np.zeros((2, 1), np.float32), np.full(2, ret / 2, np.float32), seed)


def test_filter_keeps_episodes_with_80_percent_of_the_expert_score():
    # random -1200, expert -200: the threshold is -1200 + 0.8 * 1000 = -400
    episodes = [_episode(-390.0, 0), _episode(-410.0, 1), _episode(-400.0, 2), _episode(-100.0, 3)]
    kept, dropped = filter_episodes(episodes, random=-1200.0, expert=-200.0)
    assert [e.seed for e in kept] == [0, 2, 3] and [e.seed for e in dropped] == [1]


def test_episode_checks_lengths():
    with pytest.raises(ValueError, match="3 observations, 2 actions and 2 rewards"):
        Episode(np.zeros((3, 4), np.float32), np.zeros((2, 1), np.int64), np.zeros(2, np.float32), seed=0)


def test_lockstep_episodes_of_different_lengths():
    calls = []

    def policy(observations: np.ndarray, alive: np.ndarray) -> np.ndarray:
        calls.append(alive)
        actions = expert_policy("CartPole-v1")(observations, alive)
        actions[alive != 0] = 1  # env 0 follows the expert, the others always push right and fall
        return actions

    seeds = [7, 1, 2, 3]
    episodes = run_episodes("CartPole-v1", policy, seeds)
    assert [e.seed for e in episodes] == seeds
    assert episodes[0].length == 500 and all(e.length < 20 for e in episodes[1:])
    assert len(calls) == 500 and calls[0].tolist() == [0, 1, 2, 3] and calls[-1].tolist() == [0]
    always_right = lambda obs, alive: np.ones((len(obs), 1), np.int64)  # noqa: E731
    for seed, episode in zip(seeds[1:], episodes[1:], strict=True):
        alone = run_episodes("CartPole-v1", always_right, [seed])[0]  # the same episode without the others
        np.testing.assert_array_equal(alone.observations, episode.observations)
        np.testing.assert_array_equal(alone.rewards, episode.rewards)
    assert episodes[0].observations.shape == (500, 4) and episodes[0].actions.dtype == np.int64


@pytest.mark.parametrize(
    ("env_id", "actions", "message"),
    [
        ("CartPole-v1", lambda n: np.ones(n, np.int64), r"shape \(2,\) for 2 running envs; expected \(2, 1\)"),
        ("CartPole-v1", lambda n: np.full((n, 1), 2), r"actions must be in \[0, 2\), got 2"),
        ("CartPole-v1", lambda n: np.ones((n, 1)), "discrete actions must be integers, got dtype float64"),
        ("Pendulum-v1", lambda n: np.full((n, 1), np.nan), "NaN or infinite"),
        ("Pendulum-v1", lambda n: np.zeros((n, 2)), r"shape \(2, 2\) for 2 running envs; expected \(2, 1\)"),
    ],
)
def test_bad_actions_raise(env_id, actions, message):
    with pytest.raises(ValueError, match=message):
        run_episodes(env_id, lambda obs, alive: actions(len(obs)), [0, 1])


def test_continuous_actions_are_clipped():
    episode = run_episodes("Pendulum-v1", lambda obs, alive: np.full((len(obs), 1), 5.0), [0])[0]
    pushed = run_episodes("Pendulum-v1", lambda obs, alive: np.full((len(obs), 1), 2.0), [0])[0]
    np.testing.assert_array_equal(episode.actions, 2.0)
    np.testing.assert_array_equal(episode.rewards, pushed.rewards)


@pytest.mark.parametrize("env_id", list(ENVS))
def test_shards_round_trip(tmp_path, env_id):
    manifest = generate_control(tmp_path, env_id=env_id, **TINY)
    assert manifest["format_version"] == control.FORMAT_VERSION and manifest["spec"]["env_id"] == env_id
    assert manifest["splits"]["train"] == {"shards": "train/{000000..000000}.tar", "num_samples": 3, "num_shards": 1}
    assert manifest["filter"]["train"]["kept"] == 3 and manifest["filter"]["test"]["kept"] == 2
    refs = manifest["reference_returns"]
    assert refs["episodes"] == 4 and refs["first_seed"] == control.REFERENCE_SEED_START
    assert refs == {**control.reference_returns(env_id, episodes=4), "episodes": 4, "first_seed": 2_000_000}
    assert refs["expert"] - refs["random"] > 0.5 * abs(refs["expert"])  # far apart, on every env's scale
    assert json.loads((tmp_path / shards.MANIFEST_NAME).read_text()) == manifest

    train, test = read_episodes(tmp_path, "train"), read_episodes(tmp_path, "test")
    assert len(train) == 3 and len(test) == 2
    assert min(e.seed for e in test) >= control.TEST_SEED_START > max(e.seed for e in train)
    dropped = manifest["filter"]["train"]["dropped"]
    assert [e.seed for e in train][-1] == 2 + dropped  # the first seeds that pass, from 0
    fresh = run_episodes(env_id, expert_policy(env_id, [e.seed for e in train]), [e.seed for e in train])
    for stored, episode in zip(train, fresh, strict=True):
        np.testing.assert_array_equal(stored.observations, episode.observations)
        np.testing.assert_array_equal(stored.actions, episode.actions)
        np.testing.assert_array_equal(stored.rewards, episode.rewards)
        assert stored.actions.dtype == episode.actions.dtype
        assert normalised_score(stored.total_return, random=refs["random"], expert=refs["expert"]) >= 0.8

    sample = shards.read_shard(tmp_path / "train" / "000000.tar")[1]
    meta = json.loads(sample["json"])
    assert sample["__key__"] == "ep000001" and set(sample) == {"__key__", "json", "npz"}
    assert meta["env_id"] == env_id and meta["seed"] == train[1].seed and meta["length"] == train[1].length
    assert meta["return"] == pytest.approx(train[1].total_return)
    expected = normalised_score(train[1].total_return, random=refs["random"], expert=refs["expert"])
    assert meta["normalised_score"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="no split 'val'; it has test, train"):
        read_episodes(tmp_path, "val")


def test_generation_is_a_no_op_when_complete_and_rebuilt_otherwise(tmp_path, monkeypatch):
    calls = []
    real = control.run_episodes
    monkeypatch.setattr(control, "run_episodes", lambda *args: calls.append(args) or real(*args))
    first = generate_control(tmp_path, env_id="Pendulum-v1", **TINY)
    files = _file_bytes(tmp_path)
    built = len(calls)
    assert built > 0
    assert generate_control(tmp_path, env_id="Pendulum-v1", **TINY) == first
    assert len(calls) == built  # nothing was run again

    (tmp_path / shards.MANIFEST_NAME).unlink()
    (tmp_path / "train" / "000001.tar").write_bytes(b"stale")  # left over from another run
    assert generate_control(tmp_path, env_id="Pendulum-v1", **TINY) == first
    assert len(calls) == 2 * built and _file_bytes(tmp_path) == files  # rebuilt byte for byte, stale shard gone

    generate_control(tmp_path, env_id="Pendulum-v1", **{**TINY, "episodes": 4})  # other arguments: rebuilt
    assert len(read_episodes(tmp_path, "train")) == 4


def test_cards_match_the_generator():
    pendulum = {"episodes": 200, "action_noise": 1.0}
    dart = {"episodes": 200, "action_noise": 0.2}
    for name, env_id, args in (
        ("cartpole", "CartPole-v1", {}),
        ("cartpole-dart", "CartPole-v1", dart),
        ("pendulum", "Pendulum-v1", pendulum),
    ):
        card = load_card(name)
        assert card.generator == "control" and card.generator_args == {"env_id": env_id, **args}
        assert card.name == card.root == name
        assert control.dataset_name(env_id) == name.removesuffix("-dart")  # the env's standard card; DART a second
        assert {split: (s.shards, s.num_samples) for split, s in card.splits.items()} == {
            "train": ("train/{000000..000000}.tar", args.get("episodes", 100)),
            "test": ("test/{000000..000000}.tar", 20),
        }


def test_noisy_demonstrations_leave_the_expert_path_but_carry_the_expert_labels(tmp_path):
    clean = generate_control(tmp_path / "clean", env_id="Pendulum-v1", **TINY)
    noisy = generate_control(tmp_path / "noisy", env_id="Pendulum-v1", **TINY, action_noise=1.0)
    assert noisy["spec"]["action_noise"] == 1.0 and "action_noise" not in clean["spec"]
    a, b = read_episodes(tmp_path / "clean", "train")[0], read_episodes(tmp_path / "noisy", "train")[0]
    assert a.seed == b.seed and not np.allclose(a.observations, b.observations)  # the noise moved the pendulum
    np.testing.assert_array_equal(b.actions, control.expert_actions("Pendulum-v1", b.observations))  # labels
    for split in ("test",):  # prompts stay noise-free
        np.testing.assert_array_equal(
            read_episodes(tmp_path / "clean", split)[0].observations,
            read_episodes(tmp_path / "noisy", split)[0].observations,
        )
    again = generate_control(tmp_path / "again", env_id="Pendulum-v1", **TINY, action_noise=1.0)
    assert again["splits"] == noisy["splits"]
    np.testing.assert_array_equal(read_episodes(tmp_path / "again", "train")[0].observations, b.observations)
    with pytest.raises(ValueError, match="action_noise must be >= 0"):
        generate_control(tmp_path / "bad", env_id="CartPole-v1", **TINY, action_noise=1.5)


def tiny_pendulum_card(tmp_path):
    """The Pendulum card with 3 train and 2 test episodes, built under tmp_path/data (not yet built)."""
    card = yaml.safe_load((CARDS / "pendulum.yaml").read_text())
    card.update(root=str(tmp_path / "data"), generator_args={"env_id": "Pendulum-v1", **TINY})
    card["splits"]["train"]["num_samples"] = 3
    card["splits"]["test"]["num_samples"] = 2
    (tmp_path / "card.yaml").write_text(yaml.safe_dump(card))
    return load_card(tmp_path / "card.yaml")


def test_ensure_dataset_passes_generator_args(tmp_path):
    loaded = tiny_pendulum_card(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"control --out .* --env-id Pendulum-v1 --episodes 3"):
        loaded.shard_urls("train")
    ensure_dataset(loaded)
    episodes = read_episodes(loaded, "train")
    assert len(episodes) == 3 and episodes[0].observations.shape == (200, 3)
    assert [e.seed for e in episodes] == [e.seed for e in read_episodes(tmp_path / "data", "train")]

    wrong = dataclasses.replace(loaded, generator_args={"env": "Pendulum-v1"})
    with pytest.raises(ConfigError, match="generator_args do not fit generate_control"):
        ensure_dataset(wrong)


def test_ensure_dataset_waits_for_another_builder_of_the_same_dataset(tmp_path):
    loaded = tiny_pendulum_card(tmp_path)
    builder = threading.Thread(target=ensure_dataset, args=(loaded,))
    with exclusive_lock(tmp_path / "data" / ".build.lock"):  # another process rendering it, as far as flock knows
        builder.start()
        builder.join(timeout=1.0)
        assert builder.is_alive() and not (tmp_path / "data" / "train").exists()
    builder.join(timeout=120)
    assert not builder.is_alive() and len(read_episodes(loaded, "train")) == 3


def test_discrete_action_noise_acts_at_random_at_the_given_rate():
    observations = np.random.default_rng(0).normal(0.0, 0.05, size=(20_000, 4)).astype(np.float32)
    alive = np.ones(len(observations), dtype=bool)
    expert = control.expert_actions("CartPole-v1", observations)
    assert 0.3 < expert.mean() < 0.7  # both actions occur
    np.testing.assert_array_equal(control.noisy_expert_policy("CartPole-v1", 0.0, seed=0)(observations, alive), expert)
    acted = control.noisy_expert_policy("CartPole-v1", 0.2, seed=0)(observations, alive)
    assert abs((acted != expert).mean() - 0.1) < 0.01  # a random action is the expert's half the time
    again = control.noisy_expert_policy("CartPole-v1", 0.2, seed=0)(observations, alive)
    np.testing.assert_array_equal(again, acted)  # the seed fixes the noise


def test_cartpole_dart_episodes_leave_the_expert_path_with_expert_labels(tmp_path):
    generate_control(tmp_path / "clean", env_id="CartPole-v1", **{**TINY, "episodes": 10})
    generate_control(tmp_path / "dart", env_id="CartPole-v1", **TINY, action_noise=0.2)
    clean = {e.seed: e for e in read_episodes(tmp_path / "clean", "train")}  # the expert keeps every seed
    noisy = read_episodes(tmp_path / "dart", "train")
    assert len(noisy) == 3 and all(e.total_return >= 0.8 * 500 for e in noisy)  # the filter judged the noisy rollout
    for episode in noisy:
        start = clean[episode.seed].observations
        np.testing.assert_array_equal(episode.observations[0], start[0])  # the same start,
        assert not np.allclose(episode.observations[:100], start[:100])  # then the random actions moved the cart
        np.testing.assert_array_equal(episode.actions, control.expert_actions("CartPole-v1", episode.observations))
