"""What a new user hits first, each reproduced as they ran it (issue: new-user failures).

Fresh-machine set-up, state-only gymnasium training through evaluation, any gymnasium id
without another task's keys, strict JSON results, offline RL from a dataset of an unknown
embodiment with no env, oracle rewards on a dataset without ground truth, and bad input
that must fail in one line before anything is built or written.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dataset_helpers import robot_dataset

from embodied import checkpoint

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa", "WANDB_MODE": "disabled",
       "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
TINY = ["train.warmup_steps=50", "train.learning_starts=50", "learner.batch_size=16", "learner.hidden=[16,16]",
        "eval.episodes=1", "eval.video_episodes=1", "log.every=50", "wandb.mode=disabled"]


def cli(module: str, *args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd,
                          env=ENV, timeout=timeout)


def strict_json(text: str):
    def refuse(constant):
        raise AssertionError(f"not strict JSON: bare {constant}")

    return json.loads(text, parse_constant=refuse)


# -- 1. set-up on a fresh machine -----------------------------------------------------------
def test_setup_never_calls_uv_by_bare_name():
    """`python3.12 -m pip install uv` does not put uv on PATH: the Makefile must not rely on it."""
    recipes = [line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith("\t")]
    bare = [line for line in recipes if re.search(r"(^|[\s;&|(@])uv\s", line)]
    assert not bare, f"uv called by bare name: {bare}"
    assert any("-m uv" in line or "$(UV)" in line for line in recipes)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "uv" in ci and "PATH" in ci  # CI proves the fresh-machine path


# -- 2. state-only gymnasium training ---------------------------------------------------------
def test_state_only_gym_task_trains_through_evaluation_with_a_video(tmp_path):
    run = tmp_path / "run"
    proc = cli("embodied.cli.train", "env=gym_reacher", f"run_dir={run}", "train.total_steps=100",
               "eval.every=100", "checkpoint.every=100", *TINY, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = strict_json((run / "result.json").read_text())
    assert result["eval/length"] == 50 and 0.0 <= result["eval/success"] <= 1.0
    assert list((run / "videos").glob("*.mp4"))[0].stat().st_size > 1000
    assert checkpoint.latest(run / "checkpoints") is not None


def test_any_gymnasium_id_through_the_generic_config_without_another_tasks_keys(tmp_path):
    """InvertedPendulum has no success signal: result.json says null, not a bare NaN."""
    run = tmp_path / "run"
    proc = cli("embodied.cli.train", "env=gym", "env.name=gym/InvertedPendulum-v5", f"run_dir={run}",
               "train.total_steps=60", "eval.every=60", "checkpoint.every=60", *TINY, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (run / "result.json").read_text()
    assert "NaN" not in text
    result = strict_json(text)
    assert result["eval/success"] is None and result["eval/return"] > 0
    line = strict_json(proc.stdout.strip().splitlines()[-1])
    assert line["eval/success"] is None


def test_another_tasks_config_is_refused_in_one_line_naming_the_generic_config(tmp_path):
    proc = cli("embodied.cli.train", "env.name=gym/InvertedPendulum-v5", f"run_dir={tmp_path / 'run'}",
               "train.total_steps=10", "wandb.mode=disabled", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "distractors" in proc.stderr and "env=gym" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_task_config_does_not_impose_its_time_limit_on_another_task():
    from hydra import compose, initialize_config_dir

    from embodied.cli import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose("config", overrides=["env=gym_reacher", "env.name=gym/Pusher-v5"])
    from omegaconf import OmegaConf

    import envs

    env = envs.make_env(cfg.env.name, **envs.kwargs_from_config(OmegaConf.to_container(cfg.env)))
    steps, done = 0, False
    env.reset(seed=0)
    while not done:
        _, _, terminated, truncated, _ = env.step(np.zeros(env.action_space.shape, np.float32))
        steps, done = steps + 1, terminated or truncated
    env.close()
    assert steps == 100  # Pusher's own limit, not Reacher's 50


# -- 4. offline RL from a dataset alone ------------------------------------------------------
def test_iql_from_a_labeled_dataset_of_an_unknown_embodiment_without_an_env(tmp_path):
    source = robot_dataset(tmp_path / "raw")
    labeled = tmp_path / "labeled"
    proc = cli("embodied.cli.label", f"input={source}", f"output={labeled}", "reward=clip_tiny", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    proc = cli("embodied.cli.train", "env=none", "learner=iql", f"train.dataset={labeled}", "train.total_steps=0",
               "train.offline_updates=60", "checkpoint.every=30", "learner.batch_size=16", "learner.hidden=[16,16]",
               "log.every=20", f"run_dir={run}", "wandb.mode=disabled", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = strict_json((run / "result.json").read_text())
    assert result["offline/updates"] == 60 and np.isfinite(result["offline/loss/value"])
    bounds = json.loads((run / "action_bounds.json").read_text())  # the robot's units, mapped onto [-1, 1]
    assert all(0 <= lo < hi <= 100 for lo, hi in zip(bounds["low"], bounds["high"]))
    state = checkpoint.load(run / "checkpoints")
    assert state["counters"]["offline_updates"] == 60


def test_env_none_without_what_it_needs_is_a_one_line_error(tmp_path):
    for args, expected in ([["env=none"], "train.dataset"],
                           [["env=none", f"train.dataset={tmp_path}", "train.offline_updates=5"], "total_steps=0"]):
        proc = cli("embodied.cli.train", *args, f"run_dir={tmp_path / 'run'}", "wandb.mode=disabled", cwd=tmp_path,
                   timeout=120)
        assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert not (tmp_path / "run").exists()


# -- 5. oracle rewards need ground truth -----------------------------------------------------
@pytest.mark.parametrize("reward", ["gvl_oracle", "vlac_oracle", "rlvlmf_oracle"])
def test_oracle_reward_refuses_a_dataset_without_ground_truth_and_leaves_nothing(tmp_path, reward):
    source = robot_dataset(tmp_path / "raw", episodes=2, T=6)
    out = tmp_path / "out"
    proc = cli("embodied.cli.label", f"input={source}", f"output={out}", f"reward={reward}",
               "preference_pairs=10", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "gt.progress" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() and not (tmp_path / "out.partial").exists()


@pytest.mark.parametrize("reward", ["gvl_oracle", "vlac_oracle"])
def test_gvl_and_vlac_oracles_label_a_dataset_with_ground_truth(tmp_path, reward):
    from embodied.datasets.generate import GenerateConfig, generate

    generate(GenerateConfig(env="reach", env_kwargs={"pixels": True, "cameras": ["front"], "image_size": 32},
                            kinds=("scripted",), steps=100, seed=0), tmp_path / "data")
    out = tmp_path / "out"
    proc = cli("embodied.cli.label", f"input={tmp_path / 'data' / 'scripted'}", f"output={out}", f"reward={reward}",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["episodes_failed"] == 0 and summary["episodes_labeled"] == 2


# -- 6. bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize("override, expected", [
    ("train.total_steps=abc", "train.total_steps must be an integer, got 'abc'"),
    ("train.total_steps=-5", "train.total_steps must be >= 0, got -5"),
    ("resume=maybe", "resume must be true or false, got 'maybe'"),
    ("learner.batch_size=1.5", "learner.batch_size must be an integer"),
    ("train.gamma=2", "train.gamma must be <= 1"),
    ("eval.episodes=0", "eval.episodes must be >= 1"),
])
def test_bad_training_values_fail_in_one_line_before_anything_is_written(tmp_path, override, expected):
    run = tmp_path / "runs" / "r"
    proc = cli("embodied.cli.train", override, f"run_dir={run}", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == f"error: {expected}" or expected in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()  # no empty run folder left behind


def test_bad_label_value_names_its_key(tmp_path):
    proc = cli("embodied.cli.label", f"input={tmp_path}", f"output={tmp_path / 'out'}", "reward=clip_tiny",
               "preference_pairs=abc", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "preference_pairs must be an integer, got 'abc'" in proc.stderr and "Traceback" not in proc.stderr
