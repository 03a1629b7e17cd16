"""gymnasium MuJoCo tasks (``gym/<id>``, e.g. ``gym/Reacher-v5``) under the contracts.

state: the env's own observation vector as float32. pixels (on request): the env's
``render()`` with ``render_mode="rgb_array"`` at ``image_size`` x ``image_size``, from its
default tracking camera (named ``"default"`` here) or one named camera of the model.
``render()`` always works (evaluation videos of state-only runs): at ``image_size`` when
pixels are observed (the same frames), else at ``render_size``.
Actions in [-1, 1] are rescaled to the env's action box; a discrete task (``Discrete(n)``,
``MultiDiscrete``, e.g. ``gym/CartPole-v1``) acts in ``MultiDiscrete`` choices instead
(envs.core.discrete_action_space). The instruction is a fixed
description of the task. Reacher and Pusher also report ``info["success"]`` (target
distance below ``success_distance``) and ``info["progress"]`` (``1 - d / d_0``).
"""

from __future__ import annotations

from typing import Any, Sequence

import gymnasium as gym
import numpy as np

from envs.core import (ActionScaler, check_cameras, discrete_action_space, get_physics, observation_space, set_physics,
                       unit_action_space)

INSTRUCTIONS = {
    "Reacher": "move the tip of the two-link arm to the red target",
    "Pusher": "push the white cylinder to the red goal with the arm",
    "Hopper": "hop forward as fast as possible without falling",
    "HalfCheetah": "run forward as fast as possible",
    "Walker2d": "walk forward as fast as possible without falling",
    "Ant": "walk forward as fast as possible without flipping over",
    "Humanoid": "walk forward as fast as possible without falling",
    "HumanoidStandup": "stand up from the ground",
    "Swimmer": "swim forward as fast as possible",
    "InvertedPendulum": "keep the pole balanced upright on the cart",
    "InvertedDoublePendulum": "keep the double pole balanced upright on the cart",
}
# tasks with a goal: (moving body, goal body, distance in metres that counts as success)
DISTANCE_TASKS = {"Reacher": ("fingertip", "target", 0.02), "Pusher": ("object", "goal", 0.05)}
DEFAULT_CAMERA = "default"


def make_gym(env_id: str, *, pixels: bool = False, cameras: Sequence[str] | str | None = None,
             image_size: int = 84, max_episode_steps: int | None = None,
             success_distance: float | None = None, render_size: int = 256, **make_kwargs: Any) -> gym.Env:
    """``gymnasium.make(env_id)`` wrapped into the project's conventions."""
    base = env_id.split("-v")[0].split("/")[-1]
    kwargs: dict[str, Any] = dict(make_kwargs, disable_env_checker=True)
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = max_episode_steps
    size = image_size if pixels else render_size
    kwargs.update(render_mode="rgb_array", width=size, height=size)  # the renderer starts on first use
    try:
        try:
            env = gym.make(env_id, **kwargs)
        except TypeError as e:  # a classic-control task renders at its own size
            if "width" not in str(e) or pixels:
                raise
            env = gym.make(env_id, **{k: v for k, v in kwargs.items() if k not in ("width", "height")})
    except gym.error.Error as e:  # unknown id, missing extra, wrong version
        raise ValueError(f"gym/{env_id}: {str(e).splitlines()[0]}") from None
    except TypeError as e:  # an option the task does not take
        bad = [k for k in make_kwargs if f"'{k}'" in str(e)]
        raise ValueError(f"gym/{env_id} has no option {bad[0] if bad else str(e)!r}; start from the generic "
                         f"gymnasium config (env=gym env.name=gym/{env_id}) instead of another task's") from None
    camera = None
    if pixels:
        model = getattr(env.unwrapped, "model", None)
        names = [model.camera(i).name for i in range(model.ncam)] if model is not None else []
        camera = check_cameras(cameras, [DEFAULT_CAMERA, *names], [DEFAULT_CAMERA], f"gym/{env_id}")
        if len(camera) != 1:
            raise ValueError(f"gym/{env_id}: one camera at a time, got {camera}")
        camera = camera[0]
        if camera != DEFAULT_CAMERA:
            env.close()
            env = gym.make(env_id, camera_name=camera, **kwargs)
    distance = DISTANCE_TASKS.get(base)
    if distance is not None and success_distance is not None:
        distance = (distance[0], distance[1], float(success_distance))
    instruction = INSTRUCTIONS.get(base, f"solve the {base} task")
    return GymAdapter(env, instruction, camera, image_size, distance)


class GymAdapter(gym.Wrapper):
    """Dict observation, [-1, 1] actions and task ground truth for a gymnasium env."""

    def __init__(self, env: gym.Env, instruction: str, camera: str | None, image_size: int,
                 distance: tuple[str, str, float] | None):
        super().__init__(env)
        inner = env.observation_space
        if not (isinstance(inner, gym.spaces.Box) and len(inner.shape) == 1):
            raise ValueError(f"{env.spec.id if env.spec else env}: only flat Box observations are supported")
        self.instruction, self.camera = instruction, camera
        act = env.action_space
        self._distance = distance
        self._d0 = 1.0
        self.observation_space = observation_space(inner.shape[0], [camera] if camera else [], image_size)
        if isinstance(act, gym.spaces.Discrete):  # choices are clipped into range, as Box actions into [-1, 1]
            n, start = int(act.n), int(act.start)
            self._scale = lambda a: int(np.clip(np.rint(np.asarray(a).reshape(-1)[0]), 0, n - 1)) + start
            self.action_space = discrete_action_space([n])
        elif isinstance(act, gym.spaces.MultiDiscrete) and len(act.shape) == 1:
            top, start = act.nvec - 1, act.start
            self._scale = lambda a: np.clip(np.rint(np.asarray(a)), 0, top).astype(np.int64) + start
            self.action_space = discrete_action_space(act.nvec)
        elif isinstance(act, gym.spaces.Box) and len(act.shape) == 1:
            self._scale = ActionScaler(act.low, act.high)
            self.action_space = unit_action_space(act.shape[0])
        else:
            raise ValueError(f"{env.spec.id if env.spec else env}: action space {act} is neither a flat Box nor "
                             "(Multi)Discrete")

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        if self._distance is not None:
            self._d0 = max(self._task_distance(), 1e-6)
        return self._obs(obs), self._info(info)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(self._scale(action))
        return self._obs(obs), float(reward), bool(terminated), bool(truncated), self._info(info)

    def get_state(self) -> np.ndarray:
        """The MuJoCo task's simulator state; restore it after ``reset(seed=...)`` with the
        episode's seed (the goal a task draws at reset may live outside it)."""
        u = self.env.unwrapped
        return get_physics(u.model, u.data)

    def set_state(self, saved: np.ndarray) -> dict[str, Any]:
        """Continue from a :meth:`get_state` of this episode; returns the observation there."""
        u = self.env.unwrapped
        set_physics(u.model, u.data, saved)
        return self._obs(u._get_obs())  # every gymnasium MuJoCo task builds its observation here

    def _obs(self, state: np.ndarray) -> dict[str, Any]:
        obs: dict[str, Any] = {"state": np.asarray(state, np.float32), "instruction": self.instruction}
        if self.camera is not None:
            obs["pixels"] = {self.camera: self.env.render()}
        return obs

    def _task_distance(self) -> float:
        body, goal, _ = self._distance
        u = self.env.unwrapped
        return float(np.linalg.norm(u.get_body_com(body) - u.get_body_com(goal)))

    def _info(self, info: dict) -> dict:
        if self._distance is None:
            return info
        weight = getattr(self.env.unwrapped, "_reward_dist_weight", 0.0)
        # Reacher/Pusher already report -weight * distance: reuse it instead of recomputing
        d = -info["reward_dist"] / weight if weight and "reward_dist" in info else self._task_distance()
        info["success"] = bool(d < self._distance[2])  # the env's own fresh dict of this step
        info["progress"] = min(max(1.0 - float(d) / self._d0, 0.0), 1.0)
        return info
