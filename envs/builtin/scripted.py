"""Scripted controllers of the built-in tasks, and scripted rollouts for tests, benchmarks
and demonstrations.

One controller per task, ``state -> action``, reading the state through the layout its
task class declares (``ReachEnv.TO_TARGET``, ``PushEnv.BLOCK_TO_GOAL``, ... in
envs/builtin/tasks.py); :data:`CONTROLLERS` maps task names to them. The evaluation
policies (rewards/evaluate.py), the ``scripted`` dataset kind, the teleop test double and
:func:`reach_episodes` all steer with these.
"""

from __future__ import annotations

import numpy as np

from envs.builtin.tasks import PushEnv, ReachEnv

MAX_DELTA = 0.04  # the tasks' default max_delta: metres the gripper moves per step at full action


def reach_action(state, gain: float = 1.0, *, max_delta: float = MAX_DELTA, noise=None, goal=None) -> np.ndarray:
    """Proportional controller of ``reach``: ``clip(gain * (goal - gripper) / max_delta + noise, -1, 1)``.

    goal: a planar point to steer to; default the target. With the task's ``max_delta``,
    ``gain`` is the share of the way covered in one step (1: all of it, as far as the
    action allows); with ``max_delta=1`` it is in action units per metre.
    noise: added before clipping.
    """
    s = np.asarray(state, np.float32)
    error = s[ReachEnv.TO_TARGET] if goal is None else goal - s[ReachEnv.GRIPPER]
    action = gain * error / max_delta
    if noise is not None:
        action = action + noise
    return np.clip(action, -1, 1).astype(np.float32)


def push_action(state, max_delta: float = MAX_DELTA) -> np.ndarray:
    """Controller of ``push``: go to the pre-push point behind the block (around it when
    beside or in front of it), then push it toward the goal; still once it is there."""
    s = np.asarray(state, np.float32)
    rel_b, g_b = s[PushEnv.TO_BLOCK], s[PushEnv.BLOCK_TO_GOAL]
    dist = np.linalg.norm(g_b)
    if dist < 0.015:
        return np.zeros(2, np.float32)
    d = g_b / dist
    along = np.dot(-rel_b, d)  # gripper position along the push direction, from the block
    lateral = -rel_b - along * d
    lat = np.linalg.norm(lateral)
    if along < -0.02 and lat < 0.015:  # behind the block: push it toward the goal
        action = (rel_b + d * min(dist, 0.04)) / max_delta
    elif along > -0.06 and lat < 0.07:  # beside or in front of it: go around
        perp = lateral / lat if lat > 1e-4 else np.array([-d[1], d[0]])
        action = (rel_b + 0.08 * perp - 0.08 * d) / max_delta
    else:  # to the pre-push point
        action = (rel_b - 0.08 * d) / max_delta
    return np.clip(action, -1, 1).astype(np.float32)


CONTROLLERS = {"reach": reach_action, "push": push_action}


def reach_episodes(num: int = 2, steps: int = 40, gain: float = 0.35, seed: int = 0):
    """Episodes of ``reach`` under :func:`reach_action` (``gain`` < 1 approaches the
    target over many steps, so progress rises gradually):
    ``[(frames (T+1, H, W, 3) of the front camera, instruction, true progress (T+1,))]``."""
    from envs import make_env

    env = make_env("reach", seed=seed, pixels=True, max_episode_steps=steps)
    episodes = []
    for _ in range(num):
        obs, info = env.reset()
        frames, progress = [obs["pixels"]["front"]], [info["progress"]]
        for _ in range(steps):
            obs, _, terminated, truncated, info = env.step(reach_action(obs["state"], gain))
            frames.append(obs["pixels"]["front"])
            progress.append(info["progress"])
            if terminated or truncated:
                break
        episodes.append((np.stack(frames), obs["instruction"], np.array(progress)))
    env.close()
    return episodes
