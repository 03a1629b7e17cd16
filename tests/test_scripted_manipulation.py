"""Scripted experts (envs/scripted_manipulation.py) solve their tasks from sim state."""

from __future__ import annotations

import numpy as np
import pytest

from envs import make_env
from envs.scripted_manipulation import SCRIPTED_TASKS, expert_for


def _solves(name: str, seed: int) -> int:
    """Steps to the first ``info["success"]`` with the expert (fails the test if none)."""
    env = make_env(name, seed=0)
    try:
        expert = expert_for(env.unwrapped)
        assert expert is not None, f"{name}: no expert"
        env.reset(seed=seed)
        expert.reset()
        t, done = 0, False
        while not done:
            action = expert()
            assert action.shape == (7,) and action.dtype == np.float32
            assert np.all(np.abs(action) <= 1.0)
            _, _, terminated, truncated, info = env.step(action)
            t += 1
            if info["success"]:
                return t
            done = terminated or truncated
        pytest.fail(f"{name} seed {seed}: no success within {t} steps (expert phase {expert.phase!r})")
    finally:
        env.close()


def test_lift():
    assert _solves("robosuite/Lift", seed=0) < 120


def test_libero_object_basket():
    assert _solves("libero/libero_object/0", seed=0) < 200


def test_unsupported_libero_goal_has_no_expert():
    env = make_env("libero/libero_goal/0", seed=0, max_episode_steps=2)  # open the middle drawer
    try:
        goal = env.unwrapped.env.parsed_problem["goal_state"]
        assert [g[0].lower() for g in goal] == ["open"]
        assert expert_for(env.unwrapped) is None
    finally:
        env.close()
    assert len(SCRIPTED_TASKS) >= 3
