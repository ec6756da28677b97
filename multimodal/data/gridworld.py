"""MiniGrid tasks seen from pixels, and an exact planning expert for their demonstrations.

The agent sees MiniGrid's egocentric 7 x 7-cell view rendered as RGB (8 px a cell: a (56, 56, 3) uint8 image) and
nothing else: no grid encoding, no position, no direction. The expert is privileged: it plans from the env's full
state, by breadth-first search over deep copies of the env (MiniGrid is deterministic once reset), so its plans are
shortest and its return the best possible. DoorKey-5x5 plans take about 200 expansions (0.1 s), MultiRoom-N2-S4
about 120.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["TILE_SIZE", "is_gridworld", "make_env", "plan", "planned_policy"]

TILE_SIZE = 8  # px a cell: the 7 x 7 view is 56 x 56
MOVES = (0, 1, 2, 3, 5)  # left, right, forward, pickup, toggle (drop and done never help these tasks)


def is_gridworld(env_id: str) -> bool:
    return env_id.startswith("MiniGrid-")


def make_env(env_id: str, max_episode_steps: int | None = None) -> gym.Env:
    """The env with pixel observations: its egocentric view as a (56, 56, 3) uint8 image."""
    import minigrid  # noqa: F401  (registers the MiniGrid envs with gymnasium)
    from minigrid.wrappers import ImgObsWrapper, RGBImgPartialObsWrapper

    env = gym.make(env_id, max_episode_steps=max_episode_steps, disable_env_checker=True)
    return ImgObsWrapper(RGBImgPartialObsWrapper(env, tile_size=TILE_SIZE))


def _state(env: Any) -> tuple:
    carrying = env.carrying
    held = None if carrying is None else (carrying.type, carrying.color)
    return tuple(int(v) for v in env.agent_pos), int(env.agent_dir), held, env.grid.encode().tobytes()


def plan(env: gym.Env, *, limit: int = 100_000) -> list[int]:
    """A shortest action sequence from ``env``'s present state to success; ``env`` itself is not stepped."""
    start = copy.deepcopy(env.unwrapped)
    frontier: deque[tuple[Any, list[int]]] = deque([(start, [])])
    seen = {_state(start)}
    expansions = 0
    while frontier:
        state, actions = frontier.popleft()
        for action in MOVES:
            successor = copy.deepcopy(state)
            expansions += 1
            _, reward, terminated, truncated, _ = successor.step(action)
            if terminated and reward > 0:
                return [*actions, action]
            if terminated or truncated or expansions > limit:
                continue
            key = _state(successor)
            if key not in seen:
                seen.add(key)
                frontier.append((successor, [*actions, action]))
    raise RuntimeError(f"{env.spec.id if env.spec else 'the env'}: no plan reaches the goal ({expansions} expansions)")


def planned_policy(env_id: str, seeds: Sequence[int], max_episode_steps: int | None = None):
    """The expert as a policy for ``run_episodes`` on exactly ``seeds``: each env's shortest plan from its reset,
    played one action a step (the policy's ``alive`` indices say whose turn it is)."""
    plans = []
    for seed in seeds:
        env = make_env(env_id, max_episode_steps)
        try:
            env.reset(seed=int(seed))
            plans.append(plan(env))
        finally:
            env.close()
    step = np.zeros(len(plans), dtype=np.int64)

    def policy(observations: np.ndarray, alive: np.ndarray) -> np.ndarray:
        if np.any(step[alive] >= [len(plans[i]) for i in alive]):
            raise RuntimeError(f"{env_id}: an episode outlived its plan; were the seeds and the policy's paired?")
        actions = np.array([plans[i][step[i]] for i in alive], dtype=np.int64)[:, None]
        step[alive] += 1
        return actions

    return policy
