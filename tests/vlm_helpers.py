"""Shared helpers of the VLM reward tests: synthetic and simulated episodes with known progress."""

from __future__ import annotations

import numpy as np


def render(request) -> str:
    """A request as text, each image shown as ``<image>``: what prompt snapshots pin."""
    return "".join(p if isinstance(p, str) else "<image>" for p in request.parts)


def synthetic_episode(num_steps: int = 40, size: int = 24, seed: int = 0):
    """Distinct frames (a square sliding right) and a monotone true progress in [0, 1]."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((num_steps + 1, size, size, 3), np.uint8)
    frames[..., 2] = rng.integers(0, 255)
    for t in range(num_steps + 1):
        x = int(round(t / num_steps * (size - 4)))
        frames[t, 10:14, x : x + 4, 0] = 255
        frames[t, 0, 0, 1] = t  # keeps every frame distinct even where the square does not move
    progress = (np.arange(num_steps + 1) / num_steps) ** 1.3
    return frames, progress


def reach_episodes(num: int = 2, steps: int = 40, gain: float = 0.35, seed: int = 0):
    """Episodes of the built-in ``reach`` task under a proportional controller:
    ``[(frames (T+1, H, W, 3), instruction, true progress (T+1,))]``."""
    from envs import make_env

    env = make_env("reach", seed=seed, pixels=True, max_episode_steps=steps)
    episodes = []
    for _ in range(num):
        obs, info = env.reset()
        frames, progress = [obs["pixels"]["front"]], [info["progress"]]
        for _ in range(steps):
            to_target = obs["state"][-2:]
            action = np.clip(gain * to_target / 0.04, -1, 1).astype(np.float32)
            obs, _, terminated, truncated, info = env.step(action)
            frames.append(obs["pixels"]["front"])
            progress.append(info["progress"])
            if terminated or truncated:
                break
        episodes.append((np.stack(frames), obs["instruction"], np.array(progress)))
    env.close()
    return episodes
