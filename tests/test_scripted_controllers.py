"""The built-in tasks' state layout, their scripted controllers, and saving / restoring the
simulator state through the env (the sim robot's return-and-explore)."""

from __future__ import annotations

import numpy as np
import pytest

from envs import make_env
from envs.builtin.scripted import CONTROLLERS, push_action, reach_action
from envs.builtin.tasks import PushEnv, ReachEnv


def _fields(cls) -> dict[str, slice]:
    return {k: v for k in dir(cls) if k.isupper() and isinstance(v := getattr(cls, k), slice)}


@pytest.mark.parametrize("cls", [ReachEnv, PushEnv])
def test_layout_names_every_state_entry_once(cls):
    covered = sorted(i for s in _fields(cls).values() for i in range(*s.indices(cls.state_dim)))
    assert covered == list(range(cls.state_dim))


def test_layout_matches_the_state():
    env = make_env("reach", seed=0)
    obs, _ = env.reset()
    for _ in range(3):
        s = obs["state"]
        np.testing.assert_allclose(s[ReachEnv.TO_TARGET], s[ReachEnv.TARGET] - s[ReachEnv.GRIPPER], atol=1e-6)
        obs = env.step(np.array([0.5, -0.5], np.float32))[0]
    env = make_env("push", seed=0)
    s = env.reset()[0]["state"]
    np.testing.assert_allclose(s[PushEnv.TO_BLOCK], s[PushEnv.BLOCK] - s[PushEnv.GRIPPER], atol=1e-6)
    np.testing.assert_allclose(s[PushEnv.BLOCK_TO_GOAL], s[PushEnv.GOAL] - s[PushEnv.BLOCK], atol=1e-6)


def test_reach_action_is_the_proportional_step():
    s = np.array([0.1, 0.0, 0, 0, 0.11, -0.5, 0.01, -0.5], np.float32)
    np.testing.assert_allclose(reach_action(s), [0.25, -1.0], rtol=1e-6)  # (target - gripper) / max_delta, clipped
    np.testing.assert_allclose(reach_action(s, 0.5), [0.125, -1.0], rtol=1e-6)
    np.testing.assert_allclose(reach_action(s, 10.0, max_delta=1.0, noise=np.array([0.2, 0.0])), [0.3, -1.0], rtol=1e-6)
    np.testing.assert_allclose(reach_action(s, 1.0, goal=np.array([0.08, 0.02])), [-0.5, 0.5], rtol=1e-5)  # from the gripper
    assert reach_action(s).dtype == np.float32


@pytest.mark.parametrize("task, episodes, successes", [("reach", 2, 2), ("push", 3, 2)])
def test_each_controller_solves_its_task(task, episodes, successes):
    env = make_env(task, seed=0)
    solved = 0
    for _ in range(episodes):
        obs, info = env.reset()
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(CONTROLLERS[task](obs["state"]))
            done = terminated or truncated
        solved += info["success"]
    assert solved >= successes
    assert push_action(np.zeros(14, np.float32)).tolist() == [0.0, 0.0]  # at the goal: still


@pytest.mark.parametrize("name", ["reach", "push", "gym/Reacher-v5"])
def test_env_state_round_trip_continues_the_same_way(name):
    env = make_env(name, seed=0, pixels=name != "gym/Reacher-v5")
    env.reset(seed=7)
    for _ in range(4):
        env.step(np.array([0.6, -0.3], np.float32))
    saved = env.get_wrapper_attr("get_state")()
    here = env.step(np.array([0.2, 0.4], np.float32))[0]
    for _ in range(4):
        env.step(np.array([-1.0, 1.0], np.float32))
    env.reset(seed=7)
    restored = env.get_wrapper_attr("set_state")(saved)
    again = env.step(np.array([0.2, 0.4], np.float32))[0]
    np.testing.assert_array_equal(again["state"], here["state"])
    assert restored["instruction"] == here["instruction"]
    if "pixels" in here:
        np.testing.assert_array_equal(again["pixels"]["front"], here["pixels"]["front"])
    env.close()


def test_sim_robot_restores_a_gymnasium_task():
    from real_robot.robots import RobotEnv, SimRobot

    env = RobotEnv(SimRobot("gym/Reacher-v5", seed=0, max_episode_steps=30))
    try:
        env.reset(seed=3)
        for _ in range(5):
            env.step(np.array([0.7, -0.4]))
        saved = env.robot.get_state()
        here = env.step(np.array([0.1, 0.1]))[0]
        for _ in range(5):
            env.step(np.array([-1.0, 1.0]))
        env.reset(options={"state": saved})
        np.testing.assert_array_equal(env.step(np.array([0.1, 0.1]))[0]["state"], here["state"])
    finally:
        env.close()
