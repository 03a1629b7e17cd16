"""Robot adapters: the sim robot passes the env contract; LeRobot arms map to our conventions."""

from __future__ import annotations

import numpy as np
import pytest

import envs
from real_robot.robots import RobotEnv, SimRobot, make_robot_env


def test_sim_robot_passes_the_shared_env_contract():
    env = make_robot_env({"kind": "sim", "task": "reach", "pixels": True, "image_size": 32}, seed=0)
    try:
        assert env.max_episode_steps == 50  # the task's own time limit
        envs.check_env(env, steps=10)
    finally:
        env.close()


def test_sim_robot_matches_the_env_it_serves():
    robot_env = RobotEnv(SimRobot("reach", seed=0))
    plain = envs.make_env("reach", seed=0)
    try:
        obs_a, _ = robot_env.reset(seed=5)
        obs_b, _ = plain.reset(seed=5)
        np.testing.assert_allclose(obs_a["state"], obs_b["state"], rtol=1e-6)
        assert obs_a["instruction"] == obs_b["instruction"]
        for a in np.linspace(-1, 1, 6).reshape(3, 2):
            ra = robot_env.step(a)
            rb = plain.step(a.astype(np.float32))
            np.testing.assert_allclose(ra[0]["state"], rb[0]["state"], rtol=1e-5, atol=1e-6)
            assert ra[1] == pytest.approx(rb[1]) and ra[4]["success"] == rb[4]["success"]
    finally:
        robot_env.close()
        plain.close()


def test_sim_robot_restores_a_saved_state():
    env = RobotEnv(SimRobot("reach", seed=0))
    try:
        env.reset(seed=3)
        for _ in range(5):
            env.step(np.array([0.7, -0.4]))
        saved = env.robot.get_state()
        here = env.robot.get_observation()
        for _ in range(5):
            env.step(np.array([-1.0, 1.0]))
        obs, _ = env.reset(options={"state": saved})
        assert obs["state"] == pytest.approx(np.array([here[f"state.{i}"] for i in range(8)], np.float32), abs=1e-6)
    finally:
        env.close()


class FakeArm:
    """Stands in for a physical arm only: LeRobot's Robot interface, position control."""

    def __init__(self):
        self.connected = False
        self.sent = []
        self.pos = {"shoulder.pos": 10.0, "gripper.pos": 50.0}

    observation_features = {"shoulder.pos": float, "gripper.pos": float, "front": (48, 64, 3)}
    action_features = {"shoulder.pos": float, "gripper.pos": float}

    @property
    def is_connected(self):
        return self.connected

    def connect(self, calibrate=True):
        self.connected = True

    def get_observation(self):
        return {**self.pos, "front": np.full((48, 64, 3), 7, np.uint8)}

    def send_action(self, action):
        self.sent.append(dict(action))
        self.pos.update(action)
        return action

    def disconnect(self):
        self.connected = False


def test_robot_env_maps_actions_to_motor_ranges_and_holds_position():
    arm = FakeArm()
    env = RobotEnv(arm, motors={"shoulder.pos": [-50, 50], "gripper.pos": [0, 100]}, image_size=32,
                   instruction="wave", max_episode_steps=3, hold="current")
    obs, _ = env.reset()
    assert obs["pixels"]["front"].shape == (32, 32, 3) and obs["instruction"] == "wave"
    np.testing.assert_array_equal(obs["state"], [10.0, 50.0])
    _, _, _, truncated, _ = env.step(np.array([1.0, -1.0]))
    assert arm.sent[-1] == {"shoulder.pos": 50.0, "gripper.pos": 0.0} and not truncated
    env.step(np.array([0.0, 2.0]))  # out of range is clipped to the motor range
    assert arm.sent[-1] == {"shoulder.pos": 0.0, "gripper.pos": 100.0}
    env.hold()  # position control: command where it is
    assert arm.sent[-1] == arm.sent[-2]
    assert env.step(np.zeros(2))[3]  # time limit
    with pytest.raises(ValueError, match="not actions of"):
        RobotEnv(arm, motors={"elbow.pos": [0, 1]})


def test_lerobot_so100_config_builds_without_hardware():
    env = make_robot_env({"kind": "lerobot", "type": "so100_follower", "port": "/dev/null", "image_size": 64,
                          "cameras": {"front": {"type": "opencv", "index_or_path": 0, "width": 640, "height": 480,
                                                "fps": 30}},
                          "motors": {"shoulder_pan.pos": [-40, 40], "gripper.pos": [0, 100]}})
    assert env.observation_space["pixels"]["front"].shape == (64, 64, 3)
    assert env.observation_space["state"].shape == (6,) and env.action_space.shape == (2,)
    assert env.hold_mode == "current"
    with pytest.raises(ValueError, match="unknown LeRobot robot type"):
        make_robot_env({"kind": "lerobot", "type": "no_such_arm"})
    with pytest.raises(ValueError, match="robot.kind"):
        make_robot_env({"kind": "ufo"})
