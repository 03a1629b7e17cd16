"""Robots behind one gymnasium adapter: LeRobot arms and a simulated robot.

:class:`RobotEnv` wraps any object with LeRobot's ``Robot`` interface
(``connect / get_observation / send_action / disconnect`` plus ``observation_features``
and ``action_features``) and maps it to the project's conventions: float features
become ``obs["state"]`` (float32, in feature order), camera features become
``obs["pixels"][cam]`` resized to ``image_size``, and an action in [-1, 1] is mapped
linearly onto each motor's ``[low, high]`` range from the config.

:class:`SimRobot` serves any ``envs`` task through that same interface (each
``send_action`` advances the simulation one control step), so the whole actor/learner
loop runs on one machine without hardware. It also reports the simulator's reward and
success and can save / restore the task's simulator state (return-and-explore), through
the task env's ``get_state`` / ``set_state``.
"""

from __future__ import annotations

import threading
from typing import Any, Mapping

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class SimRobot:
    """An ``envs`` task with LeRobot's Robot interface; state keys ``state.<i>``, motors ``a.<i>``."""

    name = "sim"

    def __init__(self, task: str = "reach", seed: int = 0, pixels: bool = False, cameras=None,
                 image_size: int = 64, max_episode_steps: int | None = None, **task_kwargs: Any):
        import envs

        self.env = envs.make_env(task, seed=seed, pixels=pixels, cameras=cameras, image_size=image_size,
                                 max_episode_steps=max_episode_steps, **task_kwargs)
        space = self.env.observation_space
        self.cameras = list(space["pixels"].spaces) if "pixels" in space.spaces else []
        self.state_dim = int(space["state"].shape[0])
        self.action_dim = int(self.env.action_space.shape[0])
        self.max_episode_steps = _time_limit(self.env)
        self._obs: dict | None = None
        self._feedback = (0.0, False, False, {})
        self._episode_seed = seed
        self._rng = np.random.default_rng(seed)

    # -- LeRobot Robot interface ----------------------------------------------------------
    @property
    def observation_features(self) -> dict:
        feats: dict[str, Any] = {f"state.{i}": float for i in range(self.state_dim)}
        for cam in self.cameras:
            feats[cam] = self.env.observation_space["pixels"][cam].shape
        return feats

    @property
    def action_features(self) -> dict:
        return {f"a.{i}": float for i in range(self.action_dim)}

    @property
    def is_connected(self) -> bool:
        return self._obs is not None

    def connect(self, calibrate: bool = True) -> None:
        self.reset()

    def get_observation(self) -> dict[str, Any]:
        if self._obs is None:
            raise ConnectionError("SimRobot is not connected; call connect() first")
        out: dict[str, Any] = {f"state.{i}": float(v) for i, v in enumerate(self._obs["state"])}
        for cam in self.cameras:
            out[cam] = self._obs["pixels"][cam]
        return out

    def send_action(self, action: Mapping[str, float]) -> dict[str, float]:
        if self._obs is None:
            raise ConnectionError("SimRobot is not connected; call connect() first")
        a = np.array([action[f"a.{i}"] for i in range(self.action_dim)], np.float32)
        obs, reward, terminated, truncated, info = self.env.step(np.clip(a, -1, 1))
        self._obs = obs
        self._feedback = (float(reward), bool(terminated), bool(truncated), dict(info))
        return dict(action)

    def render(self) -> np.ndarray:
        """The simulator's view (for videos), whatever the robot observes."""
        return self.env.render()

    def disconnect(self) -> None:
        self._obs = None
        self.env.close()

    # -- simulator extras -----------------------------------------------------------------
    @property
    def instruction(self) -> str:
        return str(self._obs["instruction"]) if self._obs is not None else ""

    def feedback(self) -> tuple[float, bool, bool, dict]:
        """(reward, terminated, truncated, info) of the last step; real robots have none."""
        return self._feedback

    def reset(self, seed: int | None = None) -> None:
        self._episode_seed = int(self._rng.integers(2**31)) if seed is None else int(seed)
        self._obs, info = self.env.reset(seed=self._episode_seed)
        self._feedback = (0.0, False, False, dict(info))

    def get_state(self) -> dict[str, Any]:
        """Enough to come back here: the episode's reset seed and the task's simulator state."""
        physics = self.env.get_wrapper_attr("get_state")()
        return {"seed": self._episode_seed, "physics": physics, "elapsed": getattr(self.env, "_elapsed_steps", 0)}

    def set_state(self, saved: Mapping[str, Any]) -> None:
        """Reset to the saved episode's task, then restore its physics (return-and-explore)."""
        self.reset(seed=int(saved["seed"]))
        self._obs = self.env.get_wrapper_attr("set_state")(saved["physics"])


class RobotEnv(gym.Env):
    """A LeRobot-style robot as a gymnasium env with the project's obs / action conventions.

    motors: ``{motor action key: [low, high]}`` -- the order fixes the action vector;
    [-1, 1] maps linearly onto ``[low, high]``. ``hold="current"`` holds a position-
    controlled arm by commanding its measured positions (state keys named like the
    motors); ``hold="zero"`` sends action 0 (velocity / delta control, the sim robot).
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, robot, motors: Mapping[str, Any] | None = None, cameras: list[str] | None = None,
                 image_size: int = 64, instruction: str = "", max_episode_steps: int = 200,
                 hold: str = "zero"):
        self.robot = robot
        feats = robot.observation_features
        afeats = robot.action_features
        if motors is None:
            motors = {k: (-1.0, 1.0) for k in afeats}
        unknown = [m for m in motors if m not in afeats]
        if unknown:
            raise ValueError(f"motors {unknown} are not actions of {type(robot).__name__}; it has {list(afeats)}")
        self.motors = list(motors)
        rng = np.array([list(map(float, motors[m])) for m in self.motors], np.float64).reshape(-1, 2)
        if not np.all(rng[:, 1] > rng[:, 0]):
            raise ValueError("every motor range must be [low, high] with high > low")
        self.low, self.high = rng[:, 0], rng[:, 1]
        self.state_keys = [k for k, v in feats.items() if v is float]
        all_cams = [k for k, v in feats.items() if isinstance(v, tuple)]
        self.cameras = list(all_cams if cameras is None else cameras)
        missing = [c for c in self.cameras if c not in all_cams]
        if missing:
            raise ValueError(f"cameras {missing} not on the robot; it has {all_cams}")
        if hold not in ("zero", "current"):
            raise ValueError(f"hold must be 'zero' or 'current', got {hold!r}")
        self.hold_mode, self.image_size = hold, int(image_size)
        self.instruction, self.max_episode_steps = instruction, int(max_episode_steps)
        self._max_episode_steps = self.max_episode_steps  # where gymnasium tools look for a time limit
        parts: dict[str, spaces.Space] = {}
        if self.cameras:
            parts["pixels"] = spaces.Dict({c: spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
                                           for c in self.cameras})
        parts["state"] = spaces.Box(-np.inf, np.inf, (len(self.state_keys),), np.float32)
        from envs.core import instruction_space

        parts["instruction"] = instruction_space()
        self.observation_space = spaces.Dict(parts)
        self.action_space = spaces.Box(-1.0, 1.0, (len(self.motors),), np.float32)
        self.lock = threading.Lock()  # the control loop and the watchdog share the robot
        self._last_raw: dict[str, Any] = {}
        self._steps = 0

    # -- mapping ------------------------------------------------------------------------
    def to_robot(self, action: np.ndarray) -> dict[str, float]:
        a = np.clip(np.asarray(action, np.float64).reshape(-1), -1.0, 1.0)
        if a.shape != (len(self.motors),):
            raise ValueError(f"action must have {len(self.motors)} values, got {a.shape}")
        values = self.low + (a + 1.0) * 0.5 * (self.high - self.low)
        return {m: float(v) for m, v in zip(self.motors, values)}

    def from_robot(self, values: Mapping[str, float]) -> np.ndarray:
        v = np.array([float(values[m]) for m in self.motors])
        return np.clip(2.0 * (v - self.low) / (self.high - self.low) - 1.0, -1, 1).astype(np.float32)

    def _obs(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        obs: dict[str, Any] = {}
        if self.cameras:
            obs["pixels"] = {c: _resize(np.asarray(raw[c]), self.image_size) for c in self.cameras}
        obs["state"] = np.array([raw[k] for k in self.state_keys], np.float32)
        obs["instruction"] = getattr(self.robot, "instruction", "") or self.instruction
        return obs

    # -- gymnasium ------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        with self.lock:
            if not self.robot.is_connected:
                self.robot.connect()
            options = options or {}
            if "state" in options and hasattr(self.robot, "set_state"):
                self.robot.set_state(options["state"])
            elif hasattr(self.robot, "reset"):
                self.robot.reset(seed=seed)
            self._last_raw = self.robot.get_observation()
            info = dict(self.robot.feedback()[3]) if hasattr(self.robot, "feedback") else {}
        self._steps = 0
        return self._obs(self._last_raw), info

    def step(self, action: np.ndarray):
        with self.lock:
            self.robot.send_action(self.to_robot(action))
            self._last_raw = self.robot.get_observation()
            reward, terminated, truncated, info = (self.robot.feedback() if hasattr(self.robot, "feedback")
                                                   else (0.0, False, False, {}))
        self._steps += 1
        truncated = truncated or self._steps >= self.max_episode_steps
        return self._obs(self._last_raw), reward, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        """A frame for videos: the robot's own view when it has one (the sim robot), else the
        newest frame of its first camera; None for a robot without cameras."""
        if hasattr(self.robot, "render"):
            with self.lock:
                return self.robot.render()
        cams = [k for k, v in self.robot.observation_features.items() if isinstance(v, tuple)]
        return np.asarray(self._last_raw[cams[0]]) if cams and self._last_raw else None

    def hold_action(self) -> np.ndarray:
        """The [-1, 1] action that keeps the robot where it is."""
        if self.hold_mode == "zero" or not self._last_raw:
            return np.zeros(len(self.motors), np.float32)
        return self.from_robot({m: self._last_raw.get(m, 0.0) for m in self.motors})

    def hold(self) -> None:
        """Command the hold action now (watchdog, e-stop); does not count as a step."""
        with self.lock:
            if self.robot.is_connected:
                self.robot.send_action(self.to_robot(self.hold_action()))

    def close(self) -> None:
        with self.lock:
            if self.robot.is_connected:
                self.robot.disconnect()


def _time_limit(env) -> int | None:
    while env is not None:
        if getattr(env, "_max_episode_steps", None):
            return int(env._max_episode_steps)
        env = getattr(env, "env", None)
    return None


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[:2] == (size, size):
        return np.ascontiguousarray(img, dtype=np.uint8)
    from PIL import Image

    return np.asarray(Image.fromarray(img.astype(np.uint8)).resize((size, size), Image.BILINEAR))


def make_lerobot_robot(type: str, cameras: Mapping[str, Mapping[str, Any]] | None = None, **kwargs: Any):
    """A LeRobot robot from its registered config ``type`` (e.g. ``so100_follower``, ``koch_follower``)."""
    from lerobot.cameras.configs import CameraConfig
    from lerobot.robots import RobotConfig
    from lerobot.robots.utils import make_robot_from_config

    _register_all("lerobot.robots")
    _register_all("lerobot.cameras")
    try:
        cfg_cls = RobotConfig.get_choice_class(type)
    except Exception:
        raise ValueError(f"unknown LeRobot robot type {type!r}; one of {sorted(RobotConfig.get_known_choices())}") from None
    cams = {}
    for name, cam in (cameras or {}).items():
        cam = dict(cam)
        cams[name] = CameraConfig.get_choice_class(cam.pop("type", "opencv"))(**cam)
    return make_robot_from_config(cfg_cls(cameras=cams, **kwargs))


def _register_all(package: str) -> None:
    """Import each sub-package so its configs register their ``type`` names (skip missing SDKs)."""
    import importlib
    import pkgutil

    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.ispkg:
            try:
                importlib.import_module(f"{package}.{info.name}")
            except ImportError:
                pass


def make_robot_env(cfg: Mapping[str, Any], seed: int = 0) -> RobotEnv:
    """Build a :class:`RobotEnv` from a ``configs/robot/*.yaml`` mapping."""
    cfg = dict(cfg)
    kind = cfg.pop("kind", None)
    hold = cfg.pop("hold", None)
    if kind == "sim":
        robot = SimRobot(seed=seed, **cfg)
        return RobotEnv(robot, image_size=int(cfg.get("image_size") or 64),
                        max_episode_steps=robot.max_episode_steps or 10**9, hold=hold or "zero")
    if kind == "lerobot":
        env_kw = {k: cfg.pop(k) for k in ("motors", "image_size", "instruction", "max_episode_steps") if k in cfg}
        return RobotEnv(make_lerobot_robot(**cfg), hold=hold or "current", **env_kw)
    raise ValueError(f"robot.kind must be 'sim' or 'lerobot', got {kind!r}")

