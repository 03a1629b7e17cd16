"""The learner server with every reward config, fed by a real actor process.

``embodied-learner reward=<name>`` builds its reward exactly as ``embodied-train`` does
(embodied/build.py): loop-only keys go to the labeler, RL-VLM-F runs its feedback rounds on
the learner, and failed VLM labels are counted in ``learner_stats.json``. Both ends are real
processes on loopback (plaintext: the CURVE path has its own tests in test_bridge_processes).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from embodied import checkpoint
from real_robot.bridge import transport

BIN = Path(sys.executable).parent
ENV = {**os.environ, "MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa", "WANDB_MODE": "offline",
       "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
STEPS = 300  # six 50-step reach episodes

REWARDS = {  # reward config -> overrides that keep it small
    "env": [],
    "clip_tiny": [],
    "gvl_oracle": ["reward.num_frames=8"],
    "vlac_oracle": ["reward.skip=10"],
    "rlvlmf_oracle": ["reward.feedback_every=100", "reward.feedback_queries=40", "reward.max_epochs=5",
                      "reward.ensemble_size=1", "reward.image_size=32"],
}


def start(cmd, log_path, cwd, *overrides):
    out = open(log_path, "wb")
    return subprocess.Popen([str(BIN / cmd), *overrides], stdout=out, stderr=subprocess.STDOUT, env=ENV, cwd=cwd)


def stats(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


@pytest.mark.parametrize("reward", sorted(REWARDS))
def test_learner_server_runs_each_reward_config_from_a_real_actor(tmp_path, reward):
    port = transport.free_port()
    address = f"tcp://127.0.0.1:{port}"
    learner_dir, actor_dir = tmp_path / "learner", tmp_path / "actor"
    pixels = reward != "env"
    learner = start("embodied-learner", tmp_path / "learner.log", tmp_path, f"run_dir={learner_dir}",
                    f"bridge.bind={address}", "bridge.insecure_loopback=true", f"reward={reward}",
                    *REWARDS[reward], "learner.batch_size=16", "learner.hidden=[32,32]",
                    "train.learning_starts=100", *(["spaces.cameras=[front]", "spaces.image_size=64"] if pixels else []))
    actor = start("embodied-actor", tmp_path / "actor.log", tmp_path, f"run_dir={actor_dir}", f"connect={address}",
                  "insecure_loopback=true", f"robot={'sim_reach_pixels' if pixels else 'sim_reach'}",
                  "loop.hz=100", f"loop.max_steps={STEPS}", "loop.mode=none")
    try:
        assert actor.wait(240) == 0, (tmp_path / "actor.log").read_text()[-3000:]
        episodes = STEPS // 50
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            s = stats(learner_dir / "learner_stats.json")
            r = s.get("reward", {})
            done = s.get("transitions") == STEPS and not r.get("pending_episodes") and s.get("updates", 0) > 0
            if reward in ("gvl_oracle", "vlac_oracle"):
                done = done and r.get("labeled_episodes", 0) + r.get("failed_episodes", 0) >= episodes
            if reward == "rlvlmf_oracle":
                done = done and r.get("feedback_rounds", 0) >= 2
            if done:
                break
            assert learner.poll() is None, (tmp_path / "learner.log").read_text()[-3000:]
            time.sleep(0.5)
        learner.send_signal(signal.SIGTERM)
        assert learner.wait(60) == 0, (tmp_path / "learner.log").read_text()[-3000:]
    finally:
        for p in (actor, learner):
            if p.poll() is None:
                p.kill()
    s = stats(learner_dir / "learner_stats.json")
    r = s["reward"]
    assert s["transitions"] == STEPS and s["updates"] > 0, s
    assert r["name"] == reward.split("_")[0] and r["failed_episodes"] == 0, r
    state = checkpoint.load(learner_dir / "ckpt")
    slots = state["online"]["slots"]
    labeled = np.asarray(slots["labeled"], bool)
    rewards = np.asarray(slots["reward"])[labeled]
    if reward in ("gvl_oracle", "vlac_oracle"):
        assert r["labeled_episodes"] >= STEPS // 50, r  # every finished episode got its VLM labels
    if reward == "rlvlmf_oracle":
        assert r["feedback_rounds"] >= 2, r  # PEBBLE rounds run on the learner
    if reward != "env":
        assert labeled.mean() > 0.9 and np.std(rewards) > 1e-4, (labeled.mean(), rewards[:10])  # not a constant
