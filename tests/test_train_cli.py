"""Smoke, resume and bad-input tests of ``embodied-train`` as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import policies
from embodied import checkpoint

TINY = [
    "train.total_steps=240", "train.warmup_steps=60", "train.learning_starts=60",
    "learner.batch_size=32", "learner.hidden=[32,32]", "eval.every=240", "eval.episodes=2",
    "eval.video_episodes=1", "checkpoint.every=120", "log.every=60", "train.threads=1",
]


def run_train(args, run_dir, timeout=300, check=True):
    env = dict(os.environ, MUJOCO_GL="osmesa", PYOPENGL_PLATFORM="osmesa", WANDB_MODE="offline",
               WANDB_SILENT="true")
    proc = subprocess.run([sys.executable, "-m", "embodied.cli.train", f"run_dir={run_dir}", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_smoke_run_writes_checkpoint_video_curve_and_metrics(tmp_path):
    run = tmp_path / "run"
    proc = run_train(TINY + ["wandb.mode=offline"], run)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0.0 <= result["eval/success"] <= 1.0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/success" in r for r in rows)
    assert any("loss/critic" in r for r in rows), "the learner never updated"
    assert (run / "learning_curve.png").stat().st_size > 1000
    videos = list((run / "videos").glob("*.mp4"))
    assert videos and videos[0].stat().st_size > 1000
    state = checkpoint.load(run / "checkpoints")
    assert state["counters"]["env_steps"] == 240
    assert (run / "wandb").exists()
    policy = policies.load_policy(run)  # the run folder is evaluable: <run>/policy holds the final policy
    assert checkpoint.latest(run / "policy").name == f"step_{state['counters']['updates']:010d}"
    assert policy.act({"state": np.zeros((2, 8), np.float32)}, deterministic=True).shape == (2, 2)


def test_refuses_to_overwrite_a_run_without_resume(tmp_path):
    run = tmp_path / "run"
    run_train(TINY + ["wandb.mode=disabled"], run)
    proc = run_train(TINY + ["wandb.mode=disabled"], run, check=False)
    assert proc.returncode == 2
    assert "resume=true" in proc.stderr.strip().splitlines()[-1]


def test_killed_run_resumes_from_checkpoint_with_its_replay(tmp_path):
    run = tmp_path / "run"
    args = [a for a in TINY if not a.startswith(("train.total_steps", "checkpoint.every", "eval.every"))]
    args += ["train.total_steps=3000", "checkpoint.every=120", "eval.every=100000", "wandb.mode=disabled"]
    env = dict(os.environ, MUJOCO_GL="osmesa", PYOPENGL_PLATFORM="osmesa")
    proc = subprocess.Popen([sys.executable, "-m", "embodied.cli.train", f"run_dir={run}", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            found = checkpoint.latest(run / "checkpoints")
            if found is not None and checkpoint.load(found)["counters"]["env_steps"] >= 240:
                break
            time.sleep(0.5)
        else:
            pytest.fail("no checkpoint appeared")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = checkpoint.load(run / "checkpoints")["counters"]["env_steps"]
    assert 240 <= saved < 3000
    resumed = args[:]
    resumed[resumed.index("train.total_steps=3000")] = f"train.total_steps={saved + 240}"
    run_train(resumed + ["resume=true"], run)
    state = checkpoint.load(run / "checkpoints")
    assert state["counters"]["env_steps"] == saved + 240
    # the replay came back from the checkpoint: it holds the steps from before the kill too
    assert int(state["online"]["meta"][4]) == saved + 240  # meta[4] is the replay's size
    assert state["counters"]["updates"] > 0


@pytest.mark.parametrize("override, expected", [
    ("env=nonexistent", "env"),
    ("reward=nonexistent", "reward"),
    ("learner.not_a_key=3", "not_a_key"),
    ("train.total_steps==5", "train.total_steps"),
    ("env=reach_pixels env.cameras=[nope]", "nope"),
    ("seed=abc", "seed"),
])
def test_bad_input_is_a_clear_short_error(tmp_path, override, expected):
    proc = run_train([*override.split(), "wandb.mode=disabled"], tmp_path / "run", timeout=120, check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert expected in proc.stderr


def test_metrics_are_finite_numbers(tmp_path):
    run = tmp_path / "run"
    run_train(TINY + ["wandb.mode=disabled", "train.num_envs=2"], run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss/critic"] for r in rows if "loss/critic" in r]
    assert losses and np.all(np.isfinite(losses))


@pytest.mark.slow
def test_default_experiment_learns_reach(tmp_path):
    """The README's default: SAC from state on the built-in reach task, 8k steps.
    Measured: eval success 0.0 at 4k steps and 1.0 at 6k (seed 0)."""
    run = tmp_path / "run"
    proc = run_train(["wandb.mode=disabled", "eval.video_episodes=0", "train.threads=1"], run, timeout=1500)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["eval/success"] >= 0.8, result


@pytest.mark.parametrize("reward", ["clip_tiny", "gvl_oracle", "vlac_oracle", "rlvlmf_oracle"])
def test_every_reward_module_runs_inside_training(tmp_path, reward):
    run = tmp_path / "run"
    args = [a for a in TINY if not a.startswith("eval.video")] + [
        f"reward={reward}", "wandb.mode=disabled", "eval.video_episodes=0", "env.image_size=32"]
    if reward.startswith("rlvlmf"):
        args += ["reward.feedback_every=120", "reward.feedback_queries=20", "reward.max_epochs=3"]
    run_train(args, run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/critic" in r for r in rows), f"{reward}: the learner never got labeled data"
    assert all(r.get("reward/failed_episodes", 0) == 0 for r in rows)
    if reward.startswith("rlvlmf"):
        assert any(r.get("reward/trained") or r.get("reward/dataset", 0) > 0 for r in rows), rows


def test_training_episodes_are_recorded_as_a_lerobot_dataset(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    run, data = tmp_path / "run", tmp_path / "data"
    args = [a for a in TINY if not a.startswith(("train.total_steps", "eval"))]
    run_train(args + ["train.total_steps=100", "eval.every=0", "eval.episodes=1", "eval.video_episodes=0",
                      "env=reach_pixels", "env.image_size=32", "env.cameras=[front]",
                      f"train.record_dataset={data}", "wandb.mode=disabled"], run)
    ds = LeRobotDataset(repo_id="local/run", root=data)
    assert ds.num_episodes == 2 and ds.num_frames == 100  # reach episodes are 50 steps
    frame = ds[0]
    assert "observation.images.front" in frame and "gt.progress" in frame and "action" in frame
