"""MiniGrid from pixels: the planning expert's plans are shortest and succeed, and an episode holds only what the
agent sees, its view as an image."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest

from multimodal.data.control import (
    dataset_name,
    env_spec,
    expert_actions,
    expert_policy,
    generate_control,
    run_episodes,
)
from multimodal.data.gridworld import MOVES, TILE_SIZE, make_env, plan
from multimodal.pipelines.gato import control_layout


def _success(env_id: str, seed: int, actions) -> bool:
    env = make_env(env_id, env_spec(env_id).max_steps)
    env.reset(seed=seed)
    for action in actions:
        _, reward, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            return terminated and reward > 0
    return False


@pytest.mark.parametrize("env_id", ["MiniGrid-DoorKey-5x5-v0", "MiniGrid-MultiRoom-N2-S4-v0"])
def test_plans_reach_the_goal_and_leave_the_env_as_it_was(env_id: str) -> None:
    for seed in range(3):
        env = make_env(env_id)
        env.reset(seed=seed)
        before = env.unwrapped.agent_pos
        actions = plan(env)
        assert tuple(env.unwrapped.agent_pos) == tuple(before)  # planning leaves the env where it was
        assert _success(env_id, seed, actions)


@pytest.mark.parametrize("seed", [2, 12])  # MultiRoom seeds whose plans are 6 and 5 steps
def test_no_action_sequence_one_step_shorter_than_the_plan_succeeds(seed: int) -> None:
    """Brute force over every sequence of the expert's moves, on copies of the reset env (no rendering)."""
    env = make_env("MiniGrid-MultiRoom-N2-S4-v0")
    env.reset(seed=seed)
    best = plan(env)
    assert _success("MiniGrid-MultiRoom-N2-S4-v0", seed, best) and len(best) in (5, 6)
    start = env.unwrapped
    for sequence in itertools.product(MOVES, repeat=len(best) - 1):
        state = copy.deepcopy(start)
        for action in sequence:
            _, reward, terminated, truncated, _ = state.step(action)
            assert not (terminated and reward > 0), sequence
            if terminated or truncated:
                break


def test_an_episode_holds_the_agents_view_as_pixels_and_nothing_else() -> None:
    env_id, seeds = "MiniGrid-DoorKey-5x5-v0", [0, 1]
    episodes = run_episodes(env_id, expert_policy(env_id, seeds), seeds)
    for episode, seed in zip(episodes, seeds, strict=True):
        assert episode.observations.shape[1:] == (7 * TILE_SIZE, 7 * TILE_SIZE, 3)
        assert episode.observations.dtype == np.uint8 and episode.rewards[-1] > 0.9
        env = make_env(env_id, env_spec(env_id).max_steps)  # the same steps again: each frame is the egocentric view
        obs, _ = env.reset(seed=seed)
        for frame, action in zip(episode.observations, episode.actions[:, 0], strict=True):
            np.testing.assert_array_equal(frame, obs)
            np.testing.assert_array_equal(frame, env.unwrapped.get_pov_render(tile_size=TILE_SIZE))
            obs, *_ = env.step(int(action))


def test_the_expert_needs_its_seeds_and_refuses_what_it_cannot_do(tmp_path) -> None:
    env_id = "MiniGrid-DoorKey-5x5-v0"
    with pytest.raises(ValueError, match="plans each episode from its seed: pass the seeds"):
        expert_policy(env_id)
    with pytest.raises(ValueError, match="plans from the env's state, not from observations"):
        expert_actions(env_id, np.zeros((1, 56 * 56 * 3)))
    with pytest.raises(ValueError, match="action_noise needs an expert that acts from observations"):
        generate_control(tmp_path, env_id=env_id, episodes=1, test_episodes=1, action_noise=0.1)
    assert dataset_name(env_id) == "doorkey-5x5" and dataset_name("MiniGrid-MultiRoom-N2-S4-v0") == "multiroom-n2-s4"
    # In a GATO sequence a 56 x 56 view is 3 x 3 patches (resized to 48 px): 9 + '|' + 1 action = 11 tokens.
    assert control_layout(env_spec(env_id), 64) == (11, 2)
