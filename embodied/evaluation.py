"""Policy evaluation: success rate, return, final progress, and an mp4 of the rollouts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np


def _batch(obs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obs.items():
        if isinstance(value, dict):
            out[key] = _batch(value)
        elif key == "instruction":
            out[key] = [value]
        else:
            out[key] = np.asarray(value)[None]
    return out


def evaluate(policy, env, episodes: int, seed: int, video_path: str | Path | None = None,
             video_episodes: int = 2, fps: int = 20, deterministic: bool = True,
             policy_fn: Callable | None = None) -> dict[str, float]:
    """Run ``episodes`` episodes of ``policy`` in ``env`` (one env, seeded per episode).

    Chunked policies play their chunks open loop through the shared executor, cleared at
    the start of every episode.
    """
    from envs.wrappers import VideoRecorder
    from policies.chunking import ChunkExecutor

    executor = ChunkExecutor(policy, 1) if policy_fn is None else None
    act = policy_fn or (lambda o: executor.act(o, deterministic=deterministic))

    returns, successes, progress, lengths = [], [], [], []
    has_success = False  # a task without a success signal reports success as undefined (null)
    video = VideoRecorder(video_path, fps=fps) if video_path is not None else None
    for ep in range(episodes):
        obs, info = env.reset(seed=seed + ep)
        if executor is not None:
            executor.reset()
        done, ret, success, length = False, 0.0, False, 0
        record = video_path is not None and ep < video_episodes
        while not done:
            if record:
                video.add(env.render())
            action = np.asarray(act(_batch(obs)), np.float32)
            obs, reward, terminated, truncated, info = env.step(action[0])
            ret += float(reward)
            success |= bool(info.get("success", False))
            has_success |= "success" in info
            length += 1
            done = terminated or truncated
        if record:
            video.add(env.render())
        returns.append(ret)
        successes.append(success)
        progress.append(float(info.get("progress", np.nan)))
        lengths.append(length)
    if video is not None:
        video.close()
    return {"eval/return": float(np.mean(returns)),
            "eval/success": float(np.mean(successes)) if has_success else float("nan"),
            "eval/final_progress": float(np.nanmean(progress)) if not np.all(np.isnan(progress)) else float("nan"),
            "eval/length": float(np.mean(lengths)), "eval/episodes": episodes}

