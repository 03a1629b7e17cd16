import os

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)

import pytest  # noqa: E402

from embodied.datasets.record import keep_scheduling  # noqa: E402


@pytest.fixture(autouse=True)
def _normal_cpu_scheduling():
    """A test that writes a dataset with LeRobot's API directly (SVT-AV1 video) must not leave
    its xdist worker at real-time priority for the tests after it (see keep_scheduling)."""
    with keep_scheduling():
        yield
