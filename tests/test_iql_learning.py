"""IQL learns: offline on a recorded reach dataset it beats the behaviour that wrote the
data (slow), and embodied-train continues online from the offline checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from embodied import checkpoint
from embodied.datasets.generate import rollout, scripted_reach
from embodied.datasets.record import DatasetRecorder

ROOT = Path(__file__).resolve().parents[1]


def reach_dataset(root, steps, noise, seed=0):
    import envs

    env = envs.make_env("reach", seed=seed)
    with DatasetRecorder(root, fps=10) as rec:
        stats = rollout(env, scripted_reach(noise, np.random.default_rng(seed)), steps, rec, seed)
    env.close()
    return stats


def evaluate(policy, episodes=20, seed=10_000):
    import envs

    env = envs.make_env("reach", seed=seed)
    returns, success = [], []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        ret, done = 0.0, False
        while not done:
            obs, r, term, trunc, info = env.step(policy.act({"state": obs["state"][None]}, deterministic=True)[0])
            ret, done = ret + r, term or trunc
        returns.append(ret)
        success.append(info["success"])
    return float(np.mean(returns)), float(np.mean(success))


@pytest.mark.slow
def test_offline_iql_beats_the_behaviour_policy(tmp_path):
    from embodied.datasets import load_replay
    from embodied.learners.iql import IQL, IQLConfig

    torch.manual_seed(0)
    behaviour = reach_dataset(tmp_path / "ds", steps=2000, noise=1.5)
    replay = load_replay(tmp_path / "ds", reward_key="gt.reward", cameras=[])
    import gymnasium as gym

    learner = IQL(gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, (8,), np.float32)}),
                  gym.spaces.Box(-1, 1, (2,), np.float32), IQLConfig(actor_lr_steps=600))
    learner.fit_normalizer(replay.obs["state"][: len(replay)])
    for _ in range(600):
        learner.update(replay.sample_torch(256))
    ret, success = evaluate(learner.policy(), episodes=10)
    assert ret > behaviour["return_mean"] + 5.0, (ret, behaviour)
    assert success > behaviour["success_rate"], (success, behaviour)


def run_train(args, timeout=300):
    env = dict(os.environ, MUJOCO_GL="osmesa", PYOPENGL_PLATFORM="osmesa", WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "embodied.cli.train", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_offline_to_online_continues_from_the_offline_checkpoint(tmp_path):
    reach_dataset(tmp_path / "ds", steps=600, noise=1.0)
    common = [f"run_dir={tmp_path / 'run'}", "env=reach", "learner=iql", f"train.dataset={tmp_path / 'ds'}",
              "learner.hidden=[32,32]", "learner.batch_size=32", "eval.episodes=2", "eval.video_episodes=0",
              "checkpoint.every=60", "log.every=60", "train.threads=1", "wandb.mode=disabled"]
    run_train(common + ["train.offline_updates=120", "train.total_steps=0"])
    offline = checkpoint.load(tmp_path / "run" / "checkpoints")
    assert offline["learner"]["steps"] == 120
    run_train(common + ["resume=true", "train.offline_updates=120", "train.total_steps=150",
                        "train.warmup_steps=0", "train.learning_starts=50", "eval.every=150"])
    online = checkpoint.load(tmp_path / "run" / "checkpoints")
    # the same learner kept counting: no second offline phase, online updates on top of the 120
    assert online["counters"]["offline_updates"] == 120
    assert online["learner"]["steps"] > 120
    assert online["counters"]["env_steps"] == 150
