"""Expert demonstrations for gymnasium's CartPole-v1, Pendulum-v1 and Acrobot-v1 and for MiniGrid's DoorKey-5x5 and
MultiRoom-N2-S4 (from pixels), for a GATO-style generalist agent.

The experts are scripted here, nothing is learned or downloaded: CartPole is balanced by a linear state-feedback
controller, Pendulum is swung up by energy pumping and caught by a PD stabiliser near upright, Acrobot is pumped by
a bang-bang torque; MiniGrid's expert plans a shortest path from the env's state (:mod:`multimodal.data.gridworld`)
while the data hold only what the agent sees, its view as an image. All are deterministic, so an episode is a pure
function of its environment seed.

Data follow GATO (Reed et al. 2022): expert episodes, keeping only those with at least 80% of the expert's return.
Pendulum's returns are negative, where that ratio means nothing, so the threshold is applied to the
expert-normalised score ``(return - random) / (expert - random)`` instead, with the mean returns of the random
policy and of the expert over :data:`REFERENCE_SEED_START`'s seeds as references.

Seeds come in disjoint blocks: training episodes from :data:`TRAIN_SEED_START`, held-out test episodes from
:data:`TEST_SEED_START`, online evaluation of an agent from :data:`EVAL_SEED_START` (never in the data), and the
reference returns from :data:`REFERENCE_SEED_START`.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from multimodal.data import shards
from multimodal.data.gridworld import is_gridworld, make_env, planned_policy

if TYPE_CHECKING:
    from multimodal.data.cards import DatasetCard

FORMAT_VERSION = 1
SPLITS = ("train", "test")
TRAIN_SEED_START = 0
TEST_SEED_START = 500_000
EVAL_SEED_START = 1_000_000  # for evaluating agents online; no dataset episode uses these seeds
REFERENCE_SEED_START = 2_000_000
MIN_NORMALISED_SCORE = 0.8  # GATO's "at least 80% of the expert return", on the expert-normalised score

# A policy maps the observations of the still-running envs, (N_alive, obs_dim), and their indices into the
# seed list, (N_alive,), to actions (N_alive, action_dim).
Policy = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class EnvSpec:
    """What a policy needs to know about an environment's observations and actions."""

    env_id: str
    action_kind: Literal["discrete", "continuous"]
    observation_dim: int
    action_dim: int
    num_actions: int | None = None  # discrete: actions are 0 .. num_actions - 1
    action_low: float | None = None  # continuous: actions are clipped to [action_low, action_high]
    action_high: float | None = None
    max_steps: int = 1000  # episodes are truncated after this many steps
    observation_shape: tuple[int, ...] | None = None  # pixels: an image of this shape (uint8); None: a flat vector

    @property
    def pixels(self) -> bool:
        return self.observation_shape is not None


ENVS: dict[str, EnvSpec] = {
    "CartPole-v1": EnvSpec("CartPole-v1", "discrete", observation_dim=4, action_dim=1, num_actions=2, max_steps=500),
    "Pendulum-v1": EnvSpec(
        "Pendulum-v1", "continuous", observation_dim=3, action_dim=1, action_low=-2.0, action_high=2.0, max_steps=200
    ),
    "Acrobot-v1": EnvSpec("Acrobot-v1", "discrete", observation_dim=6, action_dim=1, num_actions=3, max_steps=500),
    # MiniGrid from pixels (multimodal/data/gridworld.py): the egocentric view as a 56 x 56 RGB image, 7 actions.
    **{
        env_id: EnvSpec(
            env_id,
            "discrete",
            observation_dim=56 * 56 * 3,
            action_dim=1,
            num_actions=7,
            max_steps=max_steps,
            observation_shape=(56, 56, 3),
        )
        for env_id, max_steps in (("MiniGrid-DoorKey-5x5-v0", 250), ("MiniGrid-MultiRoom-N2-S4-v0", 40))
    },
}


def env_spec(env_id: str) -> EnvSpec:
    """The :class:`EnvSpec` of ``env_id``."""
    if env_id not in ENVS:
        raise ValueError(f"unknown env {env_id!r}; known envs: {', '.join(ENVS)}")
    return ENVS[env_id]


# ---------------------------------------------------------------------------------------------- experts

# CartPole: push right (action 1) when gains . (x, x_dot, theta, theta_dot) > 0. Balances all of 1,000 tested seeds
# for the full 500 steps with the cart within 0.12 of the centre (the episode ends at 2.4).
CARTPOLE_GAINS = np.array([0.5, 1.0, 10.0, 1.0])

# Pendulum (g = 10, m = l = 1, dt = 0.05): theta'' = 15 sin(theta) + 3 u with theta = 0 upright, so
# E = theta'^2 / 2 + 15 cos(theta) is conserved without torque, is 15 upright at rest, and dE/dt = 3 u theta'.
# Far from upright the torque pumps E towards 15 (u = gain * (15 - E) * theta', saturating at +-2); once
# cos(theta) > 0.9 (within 26 degrees) a PD law holds it: u = -(kp * theta + kd * theta'). Tuned on 300 seeds.
PENDULUM_UPRIGHT_ENERGY = 15.0
PENDULUM_ENERGY_GAIN = 5.0
PENDULUM_CAPTURE_COS = 0.9
PENDULUM_KP, PENDULUM_KD = 10.0, 2.0


def _cartpole_expert(observations: np.ndarray) -> np.ndarray:
    return (observations.astype(np.float64) @ CARTPOLE_GAINS > 0).astype(np.int64)[:, None]  # (N, 1)


def _pendulum_expert(observations: np.ndarray) -> np.ndarray:
    cos, sin, speed = observations.astype(np.float64).T  # 3 x (N,)
    angle = np.arctan2(sin, cos)
    energy = 0.5 * speed**2 + PENDULUM_UPRIGHT_ENERGY * cos
    swing = PENDULUM_ENERGY_GAIN * (PENDULUM_UPRIGHT_ENERGY - energy) * speed
    hold = -(PENDULUM_KP * angle + PENDULUM_KD * speed)
    torque = np.where(cos > PENDULUM_CAPTURE_COS, hold, swing)
    return np.clip(torque, -2.0, 2.0).astype(np.float32)[:, None]  # (N, 1)


# Acrobot (observation cos/sin of both joint angles, then their velocities w1, w2; actions: torque -1, 0, +1 on the
# second joint): bang-bang energy pumping, torque in the direction of w2 - 0.25 w1. Mean return -79.9 over seeds
# 0-199 (worst -204; the random policy about -497, most episodes never swinging up in 500 steps); the gain was the
# best of a grid over 200 seeds (w2 alone: -95).
ACROBOT_W1_GAIN = -0.25


def _acrobot_expert(observations: np.ndarray) -> np.ndarray:
    w1, w2 = observations[:, 4].astype(np.float64), observations[:, 5].astype(np.float64)
    return np.where(w2 + ACROBOT_W1_GAIN * w1 > 0, 2, 0).astype(np.int64)[:, None]  # (N, 1): +1 or -1 torque


_EXPERTS = {"CartPole-v1": _cartpole_expert, "Pendulum-v1": _pendulum_expert, "Acrobot-v1": _acrobot_expert}


def expert_actions(env_id: str, observations: np.ndarray) -> np.ndarray:
    """The scripted expert's actions for a batch of observations (N, obs_dim): (N, 1) int64 or float32."""
    spec = env_spec(env_id)
    if env_id not in _EXPERTS:
        raise ValueError(
            f"{env_id}'s expert plans from the env's state, not from observations; use expert_policy(env_id, seeds)"
        )
    observations = np.asarray(observations)
    if observations.ndim != 2 or observations.shape[1] != spec.observation_dim:
        raise ValueError(
            f"{env_id} observations must have shape (N, {spec.observation_dim}), got {observations.shape}"
        )
    return _EXPERTS[env_id](observations)


def expert_action(env_id: str, observation: np.ndarray) -> np.ndarray:
    """The scripted expert's action for one observation (obs_dim,): shape (1,), int64 or float32."""
    return expert_actions(env_id, np.asarray(observation)[None])[0]


def expert_policy(env_id: str, seeds: Sequence[int] | None = None) -> Policy:
    """The expert as a :data:`Policy` for :func:`run_episodes`: the scripted controller, or for MiniGrid the
    shortest plan of each of ``seeds`` (which the policy must then be run on, in that order)."""
    spec = env_spec(env_id)
    if is_gridworld(env_id):
        if seeds is None:
            raise ValueError(f"{env_id}'s expert plans each episode from its seed: pass the seeds it will play")
        return planned_policy(env_id, seeds, spec.max_steps)
    return lambda observations, alive: expert_actions(env_id, observations)


def random_policy(env_id: str, seed: int) -> Policy:
    """Uniformly random actions from a numpy Generator seeded by ``seed``."""
    spec = env_spec(env_id)
    rng = np.random.default_rng(seed)

    def policy(observations: np.ndarray, alive: np.ndarray) -> np.ndarray:
        shape = (len(observations), spec.action_dim)
        if spec.action_kind == "discrete":
            return rng.integers(spec.num_actions, size=shape, dtype=np.int64)
        return rng.uniform(spec.action_low, spec.action_high, size=shape).astype(np.float32)

    return policy


# ---------------------------------------------------------------------------------------------- episodes


@dataclass
class Episode:
    """One episode: the observation before each step, the action taken and the reward received."""

    observations: np.ndarray  # (T, obs_dim) float32, or (T, H, W, 3) uint8 images for pixel envs
    actions: np.ndarray  # (T, action_dim) int64 (discrete) or float32 (continuous)
    rewards: np.ndarray  # (T,) float32
    seed: int

    def __post_init__(self) -> None:
        t = len(self.rewards)
        if self.rewards.ndim != 1 or self.observations.ndim not in (2, 4) or self.actions.ndim != 2:
            raise ValueError(
                f"an episode needs observations (T, obs_dim) or (T, H, W, 3), actions (T, action_dim) and rewards "
                f"(T,), got shapes "
                f"{self.observations.shape}, {self.actions.shape} and {self.rewards.shape}"
            )
        if len(self.observations) != t or len(self.actions) != t:
            raise ValueError(
                f"episode of seed {self.seed}: {len(self.observations)} observations, {len(self.actions)} actions "
                f"and {t} rewards; they must be equal"
            )

    @property
    def length(self) -> int:
        return len(self.rewards)

    @property
    def total_return(self) -> float:
        return float(self.rewards.sum(dtype=np.float64))


def _check_actions(spec: EnvSpec, actions: Any, n: int) -> np.ndarray:
    """The policy's ``actions`` for ``n`` envs as (n, action_dim) int64 or float32 (clipped), or a ValueError."""
    actions = np.asarray(actions)
    if actions.shape != (n, spec.action_dim):
        raise ValueError(
            f"{spec.env_id}: the policy returned actions of shape {actions.shape} for {n} running envs; "
            f"expected ({n}, {spec.action_dim})"
        )
    if spec.action_kind == "discrete":
        if not np.issubdtype(actions.dtype, np.integer):
            raise ValueError(f"{spec.env_id}: discrete actions must be integers, got dtype {actions.dtype}")
        bad = (actions < 0) | (actions >= spec.num_actions)
        if bad.any():
            raise ValueError(f"{spec.env_id}: actions must be in [0, {spec.num_actions}), got {actions[bad][0]}")
        return actions.astype(np.int64)
    if not (np.issubdtype(actions.dtype, np.floating) or np.issubdtype(actions.dtype, np.integer)):
        raise ValueError(f"{spec.env_id}: continuous actions must be numbers, got dtype {actions.dtype}")
    actions = actions.astype(np.float32)
    if not np.isfinite(actions).all():
        raise ValueError(f"{spec.env_id}: the policy returned a NaN or infinite action")
    return np.clip(actions, spec.action_low, spec.action_high)


def run_episodes(env_id: str, policy: Policy, seeds: Sequence[int]) -> list[Episode]:
    """One episode per seed (``env.reset(seed=s)``), all envs stepped in lockstep, in the order of ``seeds``.

    ``policy`` is called once per step with the observations (N_alive, obs_dim) of the envs still running and
    their indices into ``seeds``, so a batched network acts on all of them at once. An episode ends when its env
    terminates or is truncated at ``max_steps``. Continuous actions are clipped to the action bounds; the
    episode records the clipped ones.
    """
    spec = env_spec(env_id)
    if spec.pixels:
        envs = [make_env(env_id, spec.max_steps) for _ in seeds]
    else:
        envs = [gym.make(env_id, max_episode_steps=spec.max_steps, disable_env_checker=True) for _ in seeds]
    try:
        current = [env.reset(seed=int(seed))[0] for env, seed in zip(envs, seeds, strict=True)]
        steps: list[list[tuple[np.ndarray, np.ndarray, float]]] = [[] for _ in seeds]
        alive = np.arange(len(seeds))
        while len(alive):
            observations = np.stack([current[i] for i in alive])  # (N_alive, obs_dim) or (N_alive, H, W, 3)
            observations = observations if spec.pixels else observations.astype(np.float32)
            actions = _check_actions(spec, policy(observations, alive.copy()), len(alive))
            running = []
            for i, observation, action in zip(alive, observations, actions, strict=True):
                step_action = int(action[0]) if spec.action_kind == "discrete" else action
                current[i], reward, terminated, truncated, _ = envs[i].step(step_action)
                steps[i].append((observation, action, float(reward)))
                if not (terminated or truncated):
                    running.append(i)
            alive = np.asarray(running, dtype=np.int64)
    finally:
        for env in envs:
            env.close()
    return [
        Episode(
            observations=np.stack([s[0] for s in episode]),
            actions=np.stack([s[1] for s in episode]),
            rewards=np.asarray([s[2] for s in episode], dtype=np.float32),
            seed=int(seed),
        )
        for episode, seed in zip(steps, seeds, strict=True)
    ]


def normalised_score(ret: float, *, random: float, expert: float) -> float:
    """``(ret - random) / (expert - random)``: 0 for the random policy, 1 for the expert."""
    if expert == random:
        raise ValueError(f"the expert and random reference returns are equal ({expert}); the score is undefined")
    return (ret - random) / (expert - random)


def reference_returns(env_id: str, *, episodes: int = 50, seed: int = REFERENCE_SEED_START) -> dict[str, float]:
    """Mean returns of the random policy and of the expert over seeds ``seed .. seed + episodes - 1``."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    seeds = range(seed, seed + episodes)
    means = {}
    for name, policy in (("random", random_policy(env_id, seed)), ("expert", expert_policy(env_id, seeds))):
        means[name] = float(np.mean([e.total_return for e in run_episodes(env_id, policy, seeds)]))
    return means


def filter_episodes(
    episodes: Sequence[Episode], *, random: float, expert: float, min_score: float = MIN_NORMALISED_SCORE
) -> tuple[list[Episode], list[Episode]]:
    """Split ``episodes`` into (kept, dropped): kept ones have an expert-normalised score >= ``min_score``."""
    kept, dropped = [], []
    for episode in episodes:
        score = normalised_score(episode.total_return, random=random, expert=expert)
        (kept if score >= min_score else dropped).append(episode)
    return kept, dropped


# ---------------------------------------------------------------------------------------------- datasets


def dataset_name(env_id: str) -> str:
    """The dataset (card) name of ``env_id``: ``CartPole-v1`` -> ``cartpole``, ``MiniGrid-DoorKey-5x5-v0`` ->
    ``doorkey-5x5``."""
    parts = env_spec(env_id).env_id.split("-")
    return "-".join(parts[1:-1] if is_gridworld(env_id) else parts[:1]).lower()


def _check_action_noise(spec: EnvSpec, noise: float) -> None:
    if not noise >= 0 or (spec.action_kind == "discrete" and noise > 1):
        raise ValueError(f"action_noise must be >= 0 (<= 1 for discrete actions), got {noise}")
    if noise and is_gridworld(spec.env_id):
        raise ValueError(f"{spec.env_id}: action_noise needs an expert that acts from observations; its plans do not")


def noisy_expert_policy(env_id: str, noise: float, seed: int) -> Policy:
    """The expert with exploration noise on the executed action: Gaussian noise of std ``noise`` added to a
    continuous action (then clipped to the bounds), or for a discrete one a uniformly random action with
    probability ``noise``. Draws from a numpy Generator seeded by ``seed``."""
    spec = env_spec(env_id)
    _check_action_noise(spec, noise)
    rng = np.random.default_rng(seed)

    def policy(observations: np.ndarray, alive: np.ndarray) -> np.ndarray:
        actions = expert_actions(env_id, observations)
        if spec.action_kind == "discrete":
            random = rng.integers(spec.num_actions, size=actions.shape, dtype=np.int64)
            return np.where(rng.random(actions.shape) < noise, random, actions)
        return (actions + rng.normal(0.0, noise, size=actions.shape)).astype(np.float32)

    return policy


def _expert_demonstrations(
    env_id: str, count: int, first_seed: int, references: dict[str, float], bar: tqdm, action_noise: float = 0.0
) -> tuple[list[Episode], int]:
    """The first ``count`` expert episodes from seed ``first_seed`` on that pass the filter, and how many did not.

    With ``action_noise`` the episodes are rolled out with :func:`noisy_expert_policy` and then labelled with the
    expert's action for each observation they reached (DART, Laskey et al. 2017): the data shows states off the
    expert's own path, each with the action that corrects it. The filter judges the noisy rollout's return.
    """
    kept: list[Episode] = []
    dropped = 0
    seed = first_seed
    while len(kept) < count:
        if dropped > 10 * count:
            raise RuntimeError(f"{env_id}: the expert passed the filter on only {len(kept)} of {dropped} episodes")
        # A batch of exactly the missing number never overshoots, so the result does not depend on batching.
        need = count - len(kept)
        seeds = range(seed, seed + need)
        policy = noisy_expert_policy(env_id, action_noise, seed) if action_noise else expert_policy(env_id, seeds)
        batch = run_episodes(env_id, policy, seeds)
        if action_noise:  # label what the noisy rollout reached with what the expert would have done there
            batch = [replace(e, actions=expert_actions(env_id, e.observations)) for e in batch]
        passed, failed = filter_episodes(batch, **references)
        kept += passed
        dropped += len(failed)
        seed += need
        bar.update(len(passed))
    return kept, dropped


def _sample(env_id: str, index: int, episode: Episode, references: dict[str, float]) -> dict[str, Any]:
    buf = io.BytesIO()
    save = np.savez_compressed if episode.observations.ndim == 4 else np.savez  # images compress ~20x
    save(buf, observations=episode.observations, actions=episode.actions, rewards=episode.rewards)
    meta = {
        "env_id": env_id,
        "seed": episode.seed,
        "return": episode.total_return,
        "length": episode.length,
        "normalised_score": normalised_score(episode.total_return, **references),
    }
    return {"__key__": f"ep{index:06d}", "json": meta, "npz": buf.getvalue()}


def generate_control(
    out_dir: Path,
    *,
    env_id: str,
    episodes: int = 100,
    test_episodes: int = 20,
    reference_episodes: int = 50,
    samples_per_shard: int = 1000,
    action_noise: float = 0.0,
    progress: bool = False,
) -> dict[str, Any]:
    """Write filtered expert episodes of ``env_id`` under ``out_dir`` (``train/``, ``test/``, manifest).

    ``episodes`` train and ``test_episodes`` test episodes, each the first that pass the filter from its seed
    block; one sample per episode. ``action_noise`` > 0 collects the train episodes with that exploration noise and
    labels them with the expert's actions (:func:`_expert_demonstrations`); test episodes stay noise-free, as they
    serve as prompts. Returns the manifest. A complete dataset of the same arguments is left
    untouched; anything else is cleared and regenerated, the manifest written last.
    """
    spec = env_spec(env_id)
    for name, value in (("episodes", episodes), ("test_episodes", test_episodes)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    _check_action_noise(spec, action_noise)
    out_dir = Path(out_dir)
    settings = {
        "env_id": env_id,
        "episodes": episodes,
        "test_episodes": test_episodes,
        "reference_episodes": reference_episodes,
        "samples_per_shard": samples_per_shard,
        "min_normalised_score": MIN_NORMALISED_SCORE,
    }
    if action_noise:  # only when set, so datasets built before the option keep their manifest
        settings["action_noise"] = action_noise
    existing = shards.read_manifest(out_dir)
    if (
        existing is not None
        and existing.get("format_version") == FORMAT_VERSION
        and existing.get("spec") == settings
        and shards.split_files_present(out_dir, existing)
    ):
        return existing

    shards.remove_manifest(out_dir)
    references = reference_returns(env_id, episodes=reference_episodes)
    sizes = {"train": episodes, "test": test_episodes}
    first_seeds = {"train": TRAIN_SEED_START, "test": TEST_SEED_START}
    splits, filtering = {}, {}
    with tqdm(total=episodes + test_episodes, desc=dataset_name(env_id), unit="ep", disable=not progress) as bar:
        for split in SPLITS:
            noise = action_noise if split == "train" else 0.0
            kept, dropped = _expert_demonstrations(env_id, sizes[split], first_seeds[split], references, bar, noise)
            samples = (_sample(env_id, i, episode, references) for i, episode in enumerate(kept))
            names = shards.write_split(out_dir / split, samples, samples_per_shard=samples_per_shard)
            pattern = f"{split}/{shards.shard_pattern(len(names))}"
            splits[split] = {"shards": pattern, "num_samples": len(kept), "num_shards": len(names)}
            filtering[split] = {"kept": len(kept), "dropped": dropped, "first_seed": first_seeds[split]}
    manifest = {
        "name": dataset_name(env_id),
        "format_version": FORMAT_VERSION,
        "generator": "control",
        "spec": settings,
        "env": json.loads(json.dumps(asdict(spec))),  # as the manifest reads back (tuples as lists)
        "gymnasium_version": gym.__version__,
        "reference_returns": {**references, "episodes": reference_episodes, "first_seed": REFERENCE_SEED_START},
        "eval_first_seed": EVAL_SEED_START,
        "filter": filtering,
        "splits": splits,
    }
    shards.write_manifest(out_dir, manifest)
    return manifest


def read_episodes(source: Path | str | DatasetCard, split: str) -> list[Episode]:
    """All episodes of ``split``, in order, from a dataset directory (with its manifest) or a dataset card."""
    if isinstance(source, (str, Path)):
        root = Path(source)
        manifest = shards.read_manifest(root)
        if manifest is None:
            raise FileNotFoundError(
                f"{root} has no {shards.MANIFEST_NAME}; write it with "
                f"`python -m multimodal.data.control --env-id {'|'.join(ENVS)} --out {root}`"
            )
        if split not in manifest["splits"]:
            raise ValueError(f"{root} has no split {split!r}; it has {', '.join(manifest['splits'])}")
        info = manifest["splits"][split]
        directory = info["shards"].rpartition("/")[0]
        paths = [root / directory / shards.shard_name(k) for k in range(info["num_shards"])]
    else:
        paths = [Path(url) for url in source.shard_urls(split)]
    episodes = []
    for path in paths:
        for sample in shards.read_shard(path):
            arrays = np.load(io.BytesIO(sample["npz"]))
            meta = json.loads(sample["json"])
            episodes.append(Episode(arrays["observations"], arrays["actions"], arrays["rewards"], seed=meta["seed"]))
    return episodes


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m multimodal.data.control --env-id CartPole-v1 --out data/cartpole [--episodes N]``."""
    parser = argparse.ArgumentParser(description="Write filtered scripted-expert episodes as WebDataset shards.")
    parser.add_argument("--env-id", required=True, choices=list(ENVS))
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: data/<name>)")
    parser.add_argument("--episodes", type=int, default=100, help="train episodes")
    parser.add_argument("--test-episodes", type=int, default=20)
    parser.add_argument("--reference-episodes", type=int, default=50)
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--action-noise", type=float, default=0.0, help="exploration noise of the train episodes")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    out = args.out or Path("data") / dataset_name(args.env_id)
    start = time.perf_counter()
    try:
        manifest = generate_control(
            out,
            env_id=args.env_id,
            episodes=args.episodes,
            test_episodes=args.test_episodes,
            reference_episodes=args.reference_episodes,
            samples_per_shard=args.samples_per_shard,
            action_noise=args.action_noise,
            progress=not args.quiet,
        )
    except ValueError as err:
        parser.error(str(err))
    print(f"{args.env_id} demonstrations at {out} ({time.perf_counter() - start:.1f} s)")
    refs = manifest["reference_returns"]
    print(
        f"  reference returns ({refs['episodes']} episodes): random {refs['random']:.1f}, expert {refs['expert']:.1f}"
    )
    for split in SPLITS:
        info, dropped = manifest["splits"][split], manifest["filter"][split]["dropped"]
        print(f"  {split:5s} {info['num_samples']:4d} episodes ({dropped} dropped by the filter)  {info['shards']}")


if __name__ == "__main__":
    main()
