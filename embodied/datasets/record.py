"""Record episodes as a LeRobotDataset (LeRobot's own writer: ``create`` / ``add_frame`` /
``save_episode`` / ``finalize``).

One row per environment step, LeRobot's convention: row ``t`` holds the observation the
action was taken in, the action, and what followed it (``next.*``, ``gt.*``). The final
observation of an episode is not stored (LeRobot datasets never hold it); readers use
the last row's own observation as its successor.

Columns written:

``observation.images.<cam>``  video (H, W, 3) per camera
``observation.state``         float32 (D,), when the env has a state
``action``                    float32 (A,) in [-1, 1]
``next.done``                 bool, the episode ended after this step (terminated or truncated)
``next.terminated``           bool, ended without bootstrapping (success / failure state)
``gt.reward``                 float32, the simulator's reward: ground truth, never a label
``gt.success``                bool, ``info["success"]`` after the step (False when absent)
``gt.progress``               float32, ``info["progress"]`` after the step (NaN when absent)
``task``                      the instruction (``obs["instruction"]`` or ``task=``)

``keys`` (a :class:`~embodied.datasets.keys.DatasetKeys`) renames the camera / state /
action columns, and ``ground_truth=False`` leaves out the ``next.*`` / ``gt.*`` columns:
together they write another project's layout, e.g. LeRobot's LIBERO datasets
(``observation.images.image``, ``observation.images.wrist_image``, ``observation.state``,
``action``, ``task`` and nothing else).

Labels written later by ``embodied-label`` go to ``next.reward`` / ``progress`` /
``success``, so ground truth and labels cannot be confused.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from embodied.contracts import Obs, Transition

from embodied.datasets.keys import DEFAULT_KEYS, IMAGE_PREFIX, STATE_KEY, DatasetKeys  # noqa: F401 - re-exported


@contextlib.contextmanager
def keep_scheduling():
    """Undo what video encoding does to the calling thread's CPU scheduling.

    LeRobot encodes episode videos with SVT-AV1, which switches the calling thread to
    real-time ``SCHED_FIFO`` priority 99 when the process runs as root (measured here:
    ``os.sched_getscheduler(0)`` goes from 0 to 1 after one encode). Everything that thread
    does next, and every process it starts, then preempts all ordinary work: a recorder in
    the robot loop or a training run started after a dataset was written can starve the
    rest of the machine (on the 2-core CI machine it stalled parallel tests for minutes).
    The thread's policy and priority are restored on exit."""
    try:
        policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    except (AttributeError, OSError):  # no POSIX scheduling API on this platform
        yield
        return
    try:
        yield
    finally:
        if os.sched_getscheduler(0) != policy or os.sched_getparam(0) != param:
            os.sched_setscheduler(0, policy, param)
GT_COLUMNS = ("gt.reward", "gt.success", "gt.progress")


def dataset_features(obs: Obs, action_dim: int, keys: DatasetKeys = DEFAULT_KEYS,
                     ground_truth: bool = True) -> dict[str, dict]:
    """LeRobot feature spec for observations shaped like ``obs`` (columns named by ``keys``)."""
    features: dict[str, dict] = {}
    for cam, img in (obs.get("pixels") or {}).items():
        img = np.asarray(img)
        if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
            raise ValueError(f"camera {cam!r} must give (H, W, 3) uint8 images, got {img.shape} {img.dtype}")
        features[keys.column(cam)] = {"dtype": "video", "shape": tuple(img.shape), "names": ["height", "width", "channels"]}
    if "state" in obs:
        features[keys.state] = {"dtype": "float32", "shape": (int(np.asarray(obs["state"]).size),), "names": None}
    features[keys.action] = {"dtype": "float32", "shape": (action_dim,), "names": None}
    for key, dtype in [("next.done", "bool"), ("next.terminated", "bool"), ("gt.reward", "float32"),
                       ("gt.success", "bool"), ("gt.progress", "float32")] if ground_truth else ():
        features[key] = {"dtype": dtype, "shape": (1,), "names": None}
    return features


class DatasetRecorder:
    """Writes transitions into a new LeRobotDataset at ``root``.

    Feed it step by step with :meth:`add` (an episode is saved when a transition is
    ``done``; transitions of several episodes may interleave, as from vectorised envs,
    since each is buffered by ``episode_id`` until it ends) or whole episodes with
    :meth:`add_episode`; call :meth:`close` at the end (or use it as a context manager),
    which also saves episodes still running. Plugs into the training loop's driver as
    ``driver.on_transition(recorder.add)``. Features come from the first transition.
    """

    def __init__(self, root: str | Path, fps: int = 10, task: str | None = None,
                 repo_id: str | None = None, robot_type: str | None = None, cameras: list[str] | None = None,
                 keys: DatasetKeys = DEFAULT_KEYS, ground_truth: bool = True):
        self.root = Path(root)
        if self.root.exists() and any(self.root.iterdir()):
            raise FileExistsError(f"dataset folder {self.root} already exists and is not empty; pick a new path")
        self.fps = fps
        self.task = task
        self.repo_id = repo_id or f"local/{self.root.name}"
        self.robot_type = robot_type
        self.cameras = cameras  # None: every camera in the observation
        self.keys, self.ground_truth = keys, ground_truth
        self.dataset = None
        self.num_episodes = 0
        self._open: dict[int, list[Transition]] = {}  # episode_id -> its steps so far

    def _create(self, t: Transition) -> None:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        obs = self._select(t.obs)
        features = dataset_features(obs, int(np.asarray(t.action).size), self.keys, self.ground_truth)
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.dataset = LeRobotDataset.create(self.repo_id, fps=self.fps, features=features, root=self.root,
                                             robot_type=self.robot_type, use_videos=True)

    def _select(self, obs: Obs) -> Obs:
        if self.cameras is None or "pixels" not in obs:
            return obs
        missing = [c for c in self.cameras if c not in obs["pixels"]]
        if missing:
            raise ValueError(f"cameras {missing} not in the observation (has {sorted(obs['pixels'])})")
        return {**obs, "pixels": {c: obs["pixels"][c] for c in self.cameras}}

    def add(self, t: Transition) -> None:
        """Append one step; saves its episode when ``t.done``."""
        if self.dataset is None:
            self._create(t)
        self._open.setdefault(t.episode_id, []).append(t)
        if t.done:
            self._write(self._open.pop(t.episode_id))

    def _write(self, steps: list[Transition]) -> None:
        for t in steps:
            self._add_frame(t)
        with keep_scheduling():
            self.dataset.save_episode()
        self.num_episodes += 1

    def _add_frame(self, t: Transition) -> None:
        obs = self._select(t.obs)
        task = obs.get("instruction") or self.task
        if not task:
            raise ValueError("no instruction in the observation: pass task= to DatasetRecorder")
        info = t.info or {}
        frame: dict[str, Any] = {self.keys.column(c): np.asarray(img) for c, img in (obs.get("pixels") or {}).items()}
        if "state" in obs:
            frame[self.keys.state] = np.asarray(obs["state"], np.float32).reshape(-1)
        frame[self.keys.action] = np.asarray(t.action, np.float32).reshape(-1)
        if self.ground_truth:
            frame["next.done"] = np.array([t.done])
            frame["next.terminated"] = np.array([t.terminated])
            frame["gt.reward"] = np.array([t.reward], np.float32)
            frame["gt.success"] = np.array([bool(info.get("success", False))])
            frame["gt.progress"] = np.array([info.get("progress", np.nan)], np.float32)
        frame["task"] = str(task)
        self.dataset.add_frame(frame)

    def end_episode(self) -> None:
        """Save every episode still open (its last row is then not marked done)."""
        for episode_id in list(self._open):
            self._write(self._open.pop(episode_id))

    def add_episode(self, transitions: Iterable[Transition]) -> None:
        for t in transitions:
            self.add(t)
        self.end_episode()

    def close(self) -> Path:
        """Save any open episode and finalize the dataset files."""
        if self.dataset is not None:
            self.end_episode()
            with keep_scheduling():
                self.dataset.finalize()
        return self.root

    def __enter__(self) -> "DatasetRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
