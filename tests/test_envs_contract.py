"""Every environment passes the same contract check (envs.check_env); bad input fails clearly."""

from __future__ import annotations


import gymnasium as gym
import numpy as np
import pytest

from envs import check_env, list_envs, make_env, make_vec_env

GROUND_TRUTH = ("success", "progress")
CASES = {
    "reach": (lambda: make_env("reach", seed=0), 20, GROUND_TRUTH),
    "reach-pixels-2cams": (lambda: make_env("reach", seed=0, pixels=True, cameras=["front", "top"],
                                            distractors=2, randomize_colors=True), 10, GROUND_TRUTH),
    "push": (lambda: make_env("push", seed=0), 20, GROUND_TRUTH),
    "push-pixels-proprio": (lambda: make_env("push", seed=0, pixels=True, image_size=64, max_episode_steps=30,
                                             proprio_only=True), 10,
                    GROUND_TRUTH),
    "gym-reacher-pixels": (lambda: make_env("gym/Reacher-v5", seed=0, pixels=True, max_episode_steps=20), 10,
                           GROUND_TRUTH),
    "gym-hopper": (lambda: make_env("gym/Hopper-v5", seed=0, max_episode_steps=30), 10, ()),
    **{f"robosuite-{task.lower()}-{kind}": (
        lambda task=task, kind=kind: make_env(f"robosuite/{task}", seed=0, pixels=kind == "pixels", max_episode_steps=6,
                                              cameras=["agentview", "robot0_eye_in_hand"] if kind == "pixels" else None),
        3, GROUND_TRUTH)
       for task in ("Lift", "PickPlaceCan", "Stack", "Door") for kind in ("state", "pixels")},
    "vector-reach-pixels": (lambda: make_vec_env("reach", 2, seed=0, pixels=True, max_episode_steps=8), 12,
                            GROUND_TRUTH),
    "vector-push-async": (lambda: make_vec_env("push", 2, seed=0, asynchronous=True, max_episode_steps=6), 8,
                          GROUND_TRUTH),
}


@pytest.mark.parametrize("case", list(CASES))
def test_contract(case):
    factory, steps, info_keys = CASES[case]
    env = factory()
    try:
        check_env(env, steps=steps, info_keys=info_keys)
    finally:
        env.close()


def test_checker_catches_broken_envs():
    """The checker is not a rubber stamp: each broken convention is reported."""

    class Wrong(gym.Wrapper):
        def __init__(self, env, mode):
            super().__init__(env)
            self.mode = mode

        def step(self, action):
            obs, r, term, trunc, info = self.env.step(action)
            if self.mode == "float64-state":
                obs = dict(obs, state=obs["state"].astype(np.float64))
            if self.mode == "terminate-at-limit":
                term, trunc = term or trunc, False
            if self.mode == "nondeterministic":
                r += np.random.rand()
            return obs, r, term, trunc, info

    for mode, message in [("float64-state", "float32"), ("terminate-at-limit", "time limit"),
                          ("nondeterministic", "same seed")]:
        with pytest.raises(AssertionError, match=message):
            check_env(Wrong(make_env("reach", max_episode_steps=5), mode), steps=3)


def test_time_limit_truncates_and_seeded_envs_repeat():
    a, b = make_env("reach", seed=7, max_episode_steps=5), make_env("reach", seed=7, max_episode_steps=5)
    other = make_env("reach", seed=8)
    oa, ob, oc = a.reset()[0], b.reset()[0], other.reset()[0]
    assert np.array_equal(oa["state"], ob["state"]) and not np.array_equal(oa["state"], oc["state"])
    flags = [a.step(np.ones(2, np.float32))[2:4] for _ in range(5)]
    assert flags == [(False, False)] * 4 + [(False, True)]  # truncated, never terminated
    assert a.action_space.sample().tolist() == b.action_space.sample().tolist()


def test_vector_autoreset_same_step_keeps_final_obs():
    """The step that ends an episode returns the next episode's first obs; the last obs is in info."""
    vec = make_vec_env("reach", 2, seed=3, max_episode_steps=3)
    single = make_env("reach", seed=4, max_episode_steps=3)  # what vector slot 1 holds
    vec.reset()
    single.reset()
    actions = np.random.default_rng(0).uniform(-1, 1, (3, 2, 2)).astype(np.float32)
    for t in range(3):
        obs, _, terminated, truncated, info = vec.step(actions[t])
        s_obs, *_ = single.step(actions[t, 1])
    assert truncated.all() and not terminated.any()
    assert info["_final_obs"].all()
    np.testing.assert_array_equal(info["final_obs"][1]["state"], s_obs["state"])
    first_of_next, _ = single.reset()
    np.testing.assert_array_equal(obs["state"][1], first_of_next["state"])
    assert obs["instruction"][1] == first_of_next["instruction"]


def test_unknown_env_name_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown env 'rech'; known envs: reach, push, lang_reach.*gym/<gymnasium id>"):
        make_env("rech")
    with pytest.raises(ValueError, match="unknown env"):
        make_vec_env("nope", 2)
    assert {"reach", "push", "gym/<gymnasium id>", "robosuite/<task>", "libero/<suite>/<task_id>"} <= set(list_envs())


@pytest.mark.parametrize("name,camera,listed", [
    ("reach", "side", "front, top"),
    ("gym/Reacher-v5", "side", "default"),
    ("robosuite/Lift", "side", "agentview, robot0_eye_in_hand"),
    ("libero/libero_spatial/0", "side", "agentview, robot0_eye_in_hand"),
])
def test_unknown_camera_lists_cameras(name, camera, listed):
    with pytest.raises(ValueError, match=f"unknown camera '{camera}'; available cameras: {listed}"):
        make_env(name, pixels=True, cameras=[camera])


def test_other_bad_input():
    with pytest.raises(ValueError, match="pixels=False"):
        make_env("reach", cameras=["front"])
    with pytest.raises(ValueError, match=r"gym/Nope-v5: .*doesn't exist"):
        make_env("gym/Nope-v5")
    with pytest.raises(ValueError, match="robosuite/Lifty: unknown task; available: .*Lift"):
        make_env("robosuite/Lifty")
    with pytest.raises(ValueError, match="max_episode_steps"):
        make_env("reach", max_episode_steps=0)




def test_a_task_in_the_name_wins_over_an_unset_task_setting():
    """embodied-eval env=lang_reach tasks=all passes the env config's `task: null` along with lang_reach/<colour>."""
    env = make_env("lang_reach/blue", task=None)
    obs, _ = env.reset(seed=0)
    assert "blue" in obs["instruction"]
    with pytest.raises(TypeError):
        make_env("lang_reach/blue", task="red")  # two different tasks: not silently one of them
