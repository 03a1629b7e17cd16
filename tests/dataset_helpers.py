"""Datasets the project did not write, made with LeRobot's own API, for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embodied.datasets.record import keep_scheduling


def robot_dataset(root: Path, episodes: int = 4, T: int = 12):
    """Another lab's robot: 2-d state, one 32x32 camera (front), 3-d actions in its own units (0..100)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    feats = {"observation.images.front": {"dtype": "video", "shape": (32, 32, 3), "names": ["height", "width", "channels"]},
             "observation.state": {"dtype": "float32", "shape": (2,), "names": None},
             "action": {"dtype": "float32", "shape": (3,), "names": None}}
    ds = LeRobotDataset.create("lab/sorter", fps=10, features=feats, root=root, use_videos=True)
    rng = np.random.default_rng(0)
    for e in range(episodes):
        for t in range(T):
            img = np.zeros((32, 32, 3), np.uint8)
            img[:, : (t + 1) * 32 // T] = 200
            ds.add_frame({"observation.images.front": img, "observation.state": rng.normal(size=2).astype(np.float32),
                          "action": rng.uniform(0, 100, 3).astype(np.float32), "task": "sort the red blocks"})
        with keep_scheduling():  # SVT-AV1 would leave this thread, and what it starts next, at FIFO 99
            ds.save_episode()
    with keep_scheduling():
        ds.finalize()
    return root
