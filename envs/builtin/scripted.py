"""Scripted rollouts of the built-in tasks, for tests, benchmarks and demonstrations."""

from __future__ import annotations

import numpy as np


def reach_episodes(num: int = 2, steps: int = 40, gain: float = 0.35, seed: int = 0):
    """Episodes of ``reach`` under a proportional controller (``gain`` < 1 approaches the
    target over many steps, so progress rises gradually):
    ``[(frames (T+1, H, W, 3) of the front camera, instruction, true progress (T+1,))]``."""
    from envs import make_env

    env = make_env("reach", seed=seed, pixels=True, max_episode_steps=steps)
    episodes = []
    for _ in range(num):
        obs, info = env.reset()
        frames, progress = [obs["pixels"]["front"]], [info["progress"]]
        for _ in range(steps):
            action = np.clip(gain * obs["state"][-2:] / 0.04, -1, 1).astype(np.float32)
            obs, _, terminated, truncated, info = env.step(action)
            frames.append(obs["pixels"]["front"])
            progress.append(info["progress"])
            if terminated or truncated:
                break
        episodes.append((np.stack(frames), obs["instruction"], np.array(progress)))
    env.close()
    return episodes
