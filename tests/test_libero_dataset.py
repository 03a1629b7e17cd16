"""A dataset in the layout of LeRobot's public LIBERO datasets, recorded by the project from
real LIBERO rollouts, is labeled by ``embodied-label`` and trains IQL through a key map in
config (``dataset_keys=lerobot_libero``), without renaming anything by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embodied import checkpoint
from embodied.datasets import DatasetRecorder
from embodied.datasets.keys import DatasetKeys
from envs import make_env

ROOT = Path(__file__).resolve().parents[1]
LIBERO_KEYS = DatasetKeys({"agentview": "observation.images.image",
                           "robot0_eye_in_hand": "observation.images.wrist_image"})
PUBLIC_LAYOUT = {"observation.images.image", "observation.images.wrist_image", "observation.state", "action",
                 "timestamp", "frame_index", "episode_index", "index", "task_index"}


def cli(module: str, args: list[str], timeout: int = 400, check: bool = True):
    env = dict(os.environ, MUJOCO_GL="osmesa", PYOPENGL_PLATFORM="osmesa", WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
    env.pop("EMBODIED_LIBERO_ASSETS", None)
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def libero_dataset(tmp_path_factory) -> Path:
    """Three short rollouts of libero_object task 2 written in LeRobot's LIBERO layout."""
    root = tmp_path_factory.mktemp("libero") / "lerobot_libero"
    env = make_env("libero/libero_object/2", seed=0, pixels=True, image_size=64, max_episode_steps=10)
    rng = np.random.default_rng(0)
    from embodied.contracts import Transition

    with DatasetRecorder(root, fps=20, keys=LIBERO_KEYS, ground_truth=False) as rec:
        for ep in range(3):
            obs, _ = env.reset(seed=ep)
            for t in range(10):
                action = rng.uniform(-1, 1, 7).astype(np.float32)
                nobs, r, term, trunc, info = env.step(action)
                rec.add(Transition(obs, action, r, nobs, term, trunc, t == 0, ep, t, info=info))
                obs = nobs
                if term or trunc:
                    break
    env.close()
    return root


def test_recorded_in_the_public_layout(libero_dataset):
    info = json.loads((libero_dataset / "meta" / "info.json").read_text())
    assert set(info["features"]) == PUBLIC_LAYOUT
    assert info["features"]["observation.state"]["shape"] == [8]
    assert info["features"]["action"]["shape"] == [7]
    assert info["total_episodes"] == 3


def test_labeled_and_trains_iql_through_the_key_map(libero_dataset, tmp_path):
    labeled = tmp_path / "labeled"
    cli("embodied.cli.label", [f"input={libero_dataset}", f"output={labeled}", "reward=clip_tiny",
                               "camera=agentview", "dataset_keys=lerobot_libero"])
    features = json.loads((labeled / "meta" / "info.json").read_text())["features"]
    assert {"next.reward", "label_ok"} <= set(features) and PUBLIC_LAYOUT <= set(features)
    assert json.loads((labeled / "meta" / "labeling.json").read_text())["camera"] == "agentview"

    run = tmp_path / "run"
    common = [f"run_dir={run}", "env=libero_object", "env.name=libero/libero_object/2", "env.image_size=64",
              "env.max_episode_steps=5", "learner=iql", "learner.inputs=[pixels,state]", "learner.hidden=[32,32]",
              "learner.batch_size=16", f"train.dataset={labeled}", "train.total_steps=0", "train.offline_updates=20",
              "eval.episodes=1", "eval.video_episodes=0", "checkpoint.every=20", "log.every=10"]
    cli("embodied.cli.train", common + ["dataset_keys=lerobot_libero"])
    state = checkpoint.load(run / "checkpoints")
    assert state["counters"]["offline_updates"] == 20 and state["learner"]["steps"] == 20

    # without the key map the env's camera names are not in the dataset: one line naming the fix
    proc = cli("embodied.cli.train", [*common[1:], f"run_dir={tmp_path / 'run2'}"], check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "agentview" in last and "dataset_keys" in last, last


def test_key_map_errors_are_one_line(libero_dataset):
    from embodied.datasets import open_dataset

    ds = open_dataset(libero_dataset)
    with pytest.raises(ValueError, match=r"dataset_keys.cameras.agentview: the dataset has no column 'observation.images.front'"):
        DatasetKeys({"agentview": "observation.images.front"}).check(ds)
    with pytest.raises(ValueError, match="dataset_keys: unknown key 'camera'"):
        DatasetKeys.from_config({"camera": {}})
    with pytest.raises(ValueError, match="must name an observation.images"):
        DatasetKeys.from_config({"cameras": {"agentview": "image"}})
