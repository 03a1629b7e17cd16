"""Read LeRobotDatasets back: whole episodes as numpy arrays, transitions, a filled replay.

Any LeRobotDataset (v3) works, not only ones this project recorded: cameras are the
``observation.images.*`` features (video or image), the state is ``observation.state``
when present, the reward a chosen column (``next.reward`` after ``embodied-label``,
``gt.reward`` for the simulator's ground truth).

A :class:`DatasetKeys` map says which dataset columns hold the env's cameras, state and
actions when they are named differently: LeRobot's LIBERO datasets store the
``agentview`` camera as ``observation.images.image`` and the wrist camera as
``observation.images.wrist_image`` (``configs/dataset_keys/lerobot_libero.yaml``). Every
reader below speaks the env's names; only this map knows the dataset's.

Row ``t`` is the transition ``frame t --action t--> frame t+1``. The last row of an
episode has no stored successor: its ``next_obs`` is its own observation (as LeRobot's
own offline buffer does) and it is terminal when ``next.terminated`` (or, lacking that
column, ``next.done``) says so; otherwise it bootstraps from its own value.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

log = logging.getLogger("embodied")

from embodied.contracts import Transition
from embodied.datasets.keys import DEFAULT_KEYS, IMAGE_PREFIX, DatasetKeys

SKIP_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")




def open_dataset(source: str | Path, download_videos: bool = True):
    """A LeRobotDataset from a local folder (holding ``meta/info.json``) or a hub id."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    path = Path(source).expanduser()
    if path.exists():
        if not (path / "meta" / "info.json").exists():
            raise FileNotFoundError(f"{path} is not a LeRobotDataset folder: meta/info.json is missing")
        return LeRobotDataset(f"local/{path.name}", root=path)
    if str(source).count("/") != 1:
        raise FileNotFoundError(f"dataset {source!r} is neither a local folder nor a hub id like 'user/name'")
    try:
        return LeRobotDataset(str(source), download_videos=download_videos)
    except Exception as e:  # noqa: BLE001 - the hub raises many types; say what to fix
        raise FileNotFoundError(f"could not load hub dataset {source!r} ({type(e).__name__}: {e}); "
                                "download it first or pass a local folder") from e


def camera_names(ds, keys: DatasetKeys = DEFAULT_KEYS) -> list[str]:
    """Camera names of a dataset, as the env calls them (``keys``; default ``observation.images.<name>``)."""
    return [keys.env_camera(k) for k in ds.meta.camera_keys if k.startswith(IMAGE_PREFIX)]


@dataclass
class Episode:
    """One episode of ``T`` rows as numpy arrays."""

    index: int
    task: str
    frames: dict[str, np.ndarray]  # cam -> (T, H, W, 3) uint8
    action: np.ndarray  # (T, A) float32
    state: np.ndarray | None = None  # (T, D) float32
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # every other numeric column, (T,) or (T, k)

    def __len__(self) -> int:
        return len(self.action)


def episode_rows(ds, index: int) -> tuple[int, int]:
    """[start, stop) row range of episode ``index`` in the dataset's frames."""
    ep = ds.meta.episodes[index]
    return int(ep["dataset_from_index"]), int(ep["dataset_to_index"])


def _decode(ds, index: int, key: str, timestamps: np.ndarray) -> np.ndarray:
    from lerobot.datasets.video_utils import decode_video_frames

    ep = ds.meta.episodes[index]
    start = float(ep[f"videos/{key}/from_timestamp"])
    path = ds.root / ds.meta.get_video_file_path(index, key)
    frames = decode_video_frames(path, [start + float(t) for t in timestamps], ds.tolerance_s,
                                 ds._video_backend, return_uint8=True)
    return frames.permute(0, 2, 3, 1).numpy()


def read_episode(ds, index: int, cameras: Sequence[str] | None = None, keys: DatasetKeys = DEFAULT_KEYS) -> Episode:
    """Episode ``index`` with the frames of ``cameras`` (env names; default: all; ``[]``: none)."""
    start, stop = episode_rows(ds, index)
    rows = ds.hf_dataset.with_format("numpy")[start:stop]
    cams = camera_names(ds, keys) if cameras is None else list(cameras)
    frames = {}
    for cam in cams:
        key = keys.column(cam)
        if key not in ds.meta.features:
            raise ValueError(f"dataset has no camera {cam!r} (column {key}); cameras: {camera_names(ds, keys)}; "
                             "map the env's cameras to the dataset's with dataset_keys")
        if ds.meta.features[key]["dtype"] == "video":
            frames[cam] = _decode(ds, index, key, rows["timestamp"])
        else:  # stored as images
            frames[cam] = np.stack([np.asarray(img.convert("RGB")) for img in ds.hf_dataset[start:stop][key]])
    tasks = ds.hf_dataset[start:start + 1]["task_index"]
    task = ds.meta.tasks.index[int(np.asarray(tasks).reshape(-1)[0])]
    columns = {k: np.asarray(v) for k, v in rows.items()
               if k not in SKIP_COLUMNS and k not in (keys.action, keys.state) and not k.startswith(IMAGE_PREFIX)
               and np.asarray(v).dtype.kind in "biuf"}
    state = np.asarray(rows[keys.state], np.float32) if keys.state in rows else None
    return Episode(index, str(task), frames, np.asarray(rows[keys.action], np.float32), state, columns)


def iter_episodes(ds, cameras: Sequence[str] | None = None, episodes: Sequence[int] | None = None,
                  keys: DatasetKeys = DEFAULT_KEYS) -> Iterator[Episode]:
    for index in range(ds.meta.total_episodes) if episodes is None else episodes:
        yield read_episode(ds, int(index), cameras, keys)


def _flat(x: np.ndarray | None, n: int, default: Any) -> np.ndarray:
    return np.full(n, default) if x is None else np.asarray(x).reshape(n, -1)[:, 0]


def episode_transitions(ep: Episode, reward_key: str = "next.reward", episode_id: int | None = None) -> list[Transition]:
    """The episode's rows as transitions (rewards from ``reward_key``)."""
    if reward_key != "none" and reward_key not in ep.columns:  # "none": behaviour cloning, rewards 0
        raise ValueError(f"episode {ep.index} has no {reward_key!r} column; columns: {sorted(ep.columns)}")
    T = len(ep)
    rewards = _flat(ep.columns.get(reward_key), T, 0.0).astype(np.float32)
    if not np.isfinite(rewards).all():
        raise ValueError(f"episode {ep.index} has non-finite {reward_key!r} values (failed labels?); "
                         "drop it or relabel")
    done = _flat(ep.columns.get("next.done"), T, False).astype(bool)
    terminated = _flat(ep.columns.get("next.terminated", ep.columns.get("next.done")), T, False).astype(bool)
    success = _flat(ep.columns.get("gt.success"), T, False).astype(bool)
    progress = _flat(ep.columns.get("gt.progress"), T, np.nan).astype(np.float32)

    def obs(t: int) -> dict:
        o: dict[str, Any] = {"instruction": ep.task}
        if ep.frames:
            o["pixels"] = {c: f[t] for c, f in ep.frames.items()}
        if ep.state is not None:
            o["state"] = ep.state[t]
        return o

    out = []
    for t in range(T):
        last = t == T - 1
        out.append(Transition(
            obs=obs(t), action=ep.action[t], reward=float(rewards[t]), next_obs=obs(t + 1 if not last else t),
            terminated=bool(terminated[t]) and last, truncated=last and not bool(terminated[t]),
            is_first=t == 0, episode_id=ep.index if episode_id is None else episode_id, step=t,
            info={"success": bool(success[t]), "progress": float(progress[t]), "done": bool(done[t])}))
    return out


def dataset_spaces(ds, cameras: Sequence[str] | None = None, keys: DatasetKeys = DEFAULT_KEYS):
    """(observation_space, action_space) of the dataset as gymnasium spaces (env names)."""
    from gymnasium import spaces

    feats = ds.meta.features
    obs: dict[str, Any] = {}
    cams = camera_names(ds, keys) if cameras is None else list(cameras)
    for cam in cams:
        if keys.column(cam) not in feats:
            raise ValueError(f"the env's camera {cam!r} is not in the dataset (no column {keys.column(cam)}; "
                             f"cameras: {camera_names(ds, keys)}); map it with dataset_keys.cameras.{cam}=<column>")
    if cams:
        obs["pixels"] = spaces.Dict({c: spaces.Box(0, 255, tuple(feats[keys.column(c)]["shape"]), np.uint8)
                                     for c in cams})
    if keys.state in feats:
        obs["state"] = spaces.Box(-np.inf, np.inf, tuple(feats[keys.state]["shape"]), np.float32)
    if keys.action not in feats:
        raise ValueError(f"dataset has no {keys.action!r} column; offline RL needs actions "
                         "(name the column with dataset_keys.action)")
    action = spaces.Box(-1.0, 1.0, tuple(feats[keys.action]["shape"]), np.float32)
    return spaces.Dict(obs), action


def action_bounds(ds, keys: DatasetKeys = DEFAULT_KEYS) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-dimension (low, high) of the dataset's actions when they leave [-1, 1], else None.

    The contracts keep actions in [-1, 1]; a dataset recorded in a robot's own units (joint
    angles, gripper millimetres) is mapped onto it with these bounds, and the robot adapter
    maps [-1, 1] back onto the same range.
    """
    actions = np.asarray(ds.hf_dataset.with_format("numpy")[keys.action], np.float64).reshape(ds.meta.total_frames, -1)
    low, high = actions.min(0), actions.max(0)
    if low.min() >= -1.0 - 1e-6 and high.max() <= 1.0 + 1e-6:
        return None
    return low.astype(np.float32), high.astype(np.float32)


def to_unit(action: np.ndarray, bounds: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Actions in [low, high] -> [-1, 1] (a dimension that never varies maps to 0)."""
    low, high = bounds
    span = np.where(high > low, high - low, 1.0)
    return np.where(high > low, 2.0 * (action - low) / span - 1.0, 0.0).astype(np.float32)


def load_replay(source, obs_space=None, action_space=None, reward_key: str | None = None,
                cameras: Sequence[str] | None = None, capacity: int | None = None, n_step: int = 1,
                gamma: float = 0.99, seed: int = 0, bounds: tuple[np.ndarray, np.ndarray] | None = None,
                keys: DatasetKeys = DEFAULT_KEYS):
    """A :class:`embodied.replay.Replay` (``offline=True``) holding every row of a dataset.

    ``obs_space`` / ``action_space`` (an env's): the replay takes the env's layout and
    the dataset must provide it (same cameras and image sizes, same state and action
    sizes). Without them the layout comes from the dataset; ``cameras=[]`` loads state
    only (fast), default every camera. ``reward_key`` None: ``next.reward`` (labels) when
    the dataset has it, else the simulator's ``gt.reward`` (logged); ``"none"``: no rewards
    (zeros, for behaviour cloning on data nobody labeled). ``bounds``: (low, high)
    of the dataset's actions, mapped onto [-1, 1] (see :func:`action_bounds`). ``keys``: the
    dataset's names for the env's cameras / state / actions (:class:`DatasetKeys`).
    """
    from embodied.replay import Replay

    ds = source if hasattr(source, "meta") else open_dataset(source)
    keys.check(ds)
    if reward_key is None:
        reward_key = "next.reward" if "next.reward" in ds.meta.features else "gt.reward"
        if reward_key == "gt.reward" and reward_key in ds.meta.features:
            log.info("load_replay: %s has no next.reward labels; using the simulator's gt.reward", ds.root)
    if reward_key != "none" and reward_key not in ds.meta.features:
        raise ValueError(f"dataset has no {reward_key!r} column; label it with embodied-label "
                         "or use reward_key=gt.reward for the simulator's ground truth")
    if obs_space is not None:
        cameras = list(obs_space["pixels"].spaces) if "pixels" in obs_space.spaces else []
    ds_obs, ds_action = dataset_spaces(ds, cameras, keys)
    if obs_space is None:
        obs_space, action_space = ds_obs, ds_action
    else:
        for key in ("state", "pixels"):
            if key in obs_space.spaces and key not in ds_obs.spaces:
                raise ValueError(f"the env observes {key!r} but the dataset has no such column")
        if "state" in obs_space.spaces and obs_space["state"].shape != ds_obs["state"].shape:
            raise ValueError(f"dataset state has shape {ds_obs['state'].shape}, the env's {obs_space['state'].shape}")
        for cam in cameras:
            if obs_space["pixels"][cam].shape != ds_obs["pixels"][cam].shape:
                raise ValueError(f"dataset camera {cam!r} images are {ds_obs['pixels'][cam].shape}, "
                                 f"the env's {obs_space['pixels'][cam].shape}")
        if action_space is not None and action_space.shape != ds_action.shape:
            raise ValueError(f"dataset actions have shape {ds_action.shape}, the env's {action_space.shape}")
    replay = Replay(capacity or ds.meta.total_frames, obs_space, action_space or ds_action, n_step=n_step,
                    gamma=gamma, seed=seed, offline=True, final_capacity=ds.meta.total_episodes + 1)
    skipped = []
    for ep in iter_episodes(ds, cameras, keys=keys):
        if "label_ok" in ep.columns and not np.asarray(ep.columns["label_ok"]).all():
            skipped.append(ep.index)  # labeling failed: rows hold NaN rewards, never train on them
            continue
        if bounds is not None:
            ep.action = to_unit(ep.action, bounds)
        replay.add_batch(episode_transitions(ep, reward_key))
    if skipped:
        log.warning("load_replay: skipped %d episode(s) whose labeling failed: %s", len(skipped), skipped[:20])
    if len(replay) == 0:
        raise ValueError(f"no usable episode in {getattr(ds, 'root', source)}: every episode failed labeling")
    return replay
