"""Shared pieces of every environment: the observation space and action rescaling.

Every env made by :func:`envs.make_env` follows ``embodied/contracts.py``: a
``spaces.Dict`` observation with ``"pixels"`` (one ``(H, W, 3)`` uint8 Box per camera,
only when pixels were requested), ``"state"`` (float32 Box) and ``"instruction"``
(``spaces.Text``), and a ``Box(-1, 1, (A,), float32)`` action space.
"""

from __future__ import annotations

import string
from typing import Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

INSTRUCTION_MAX_LENGTH = 512


def instruction_space() -> spaces.Text:
    """Text space for natural-language instructions (printable ASCII, spaces included)."""
    return spaces.Text(INSTRUCTION_MAX_LENGTH, min_length=0, charset=string.printable)


def observation_space(
    state_dim: int | None, cameras: Sequence[str] = (), image_size: int = 84
) -> spaces.Dict:
    """The project's observation space: pixels per camera (if any), state, instruction."""
    parts: dict[str, spaces.Space] = {}
    if cameras:
        parts["pixels"] = spaces.Dict(
            {cam: spaces.Box(0, 255, (image_size, image_size, 3), np.uint8) for cam in cameras}
        )
    if state_dim is not None:
        parts["state"] = spaces.Box(-np.inf, np.inf, (state_dim,), np.float32)
    parts["instruction"] = instruction_space()
    return spaces.Dict(parts)


def unit_action_space(dim: int) -> spaces.Box:
    """The project's action space: float32 in [-1, 1]."""
    return spaces.Box(-1.0, 1.0, (dim,), np.float32)


def discrete_action_space(nvec) -> spaces.MultiDiscrete:
    """The project's discrete action space: one choice of ``nvec[d]`` values per dimension
    (a gymnasium ``Discrete(n)`` becomes ``MultiDiscrete([n])``); learners get the choices as
    a (D,) vector (stored as float32 in the replay, exact for any realistic n)."""
    return spaces.MultiDiscrete(np.asarray(nvec, np.int64))


class ActionScaler:
    """Maps actions in [-1, 1] to a simulator's ``[low, high]`` box and back."""

    def __init__(self, low: np.ndarray, high: np.ndarray):
        low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise ValueError("cannot rescale an unbounded action space to [-1, 1]")
        self.low, self.high = low, high
        self.mid, self.half = (high + low) / 2.0, (high - low) / 2.0
        # few dimensions: Python scalar maths beats four numpy calls on tiny arrays
        self._scalar = list(zip(self.mid.tolist(), self.half.tolist())) if low.shape == (low.size,) and low.size <= 8 \
            else None

    def __call__(self, action: np.ndarray) -> np.ndarray:
        if self._scalar is not None and type(action) is np.ndarray and action.shape == (len(self._scalar),):
            return np.array([m + h * min(max(x, -1.0), 1.0) for x, (m, h) in zip(action.tolist(), self._scalar)])
        a = np.minimum(np.maximum(np.asarray(action, np.float64), -1.0), 1.0)  # cheaper than np.clip
        return self.mid + self.half * a


def check_cameras(requested: Sequence[str] | str | None, available: Sequence[str],
                  default: Sequence[str], env_name: str) -> list[str]:
    """Validate requested camera names; ``None`` selects ``default``."""
    if requested is None:
        return list(default)
    if isinstance(requested, str):
        requested = [requested]
    requested = list(requested)
    if not requested:
        raise ValueError(f"{env_name}: cameras must name at least one of {list(available)}")
    for cam in requested:
        if cam not in available:
            raise ValueError(
                f"{env_name}: unknown camera {cam!r}; available cameras: {', '.join(available)}"
            )
    return requested


class SeedFirstReset(gym.Wrapper):
    """Uses ``seed`` for the first ``reset()`` that brings no seed of its own.

    ``make_env(..., seed=s)`` thereby makes an env whose whole stream of episodes is
    reproducible without the caller passing the seed again. The action space is
    seeded too, so ``action_space.sample()`` is reproducible.
    """

    def __init__(self, env: gym.Env, seed: int | None):
        super().__init__(env)
        self._pending_seed = seed
        if seed is not None:
            self.action_space.seed(seed)

    def reset(self, *, seed=None, options=None):
        if seed is None:
            seed, self._pending_seed = self._pending_seed, None
        else:
            self._pending_seed = None
        return self.env.reset(seed=seed, options=options)


def get_physics(model, data) -> np.ndarray:
    """A MuJoCo model's integration state (time, qpos, qvel, act, controls, applied forces,
    mocap poses): what :func:`set_physics` needs to continue from here."""
    import mujoco

    sig = mujoco.mjtState.mjSTATE_INTEGRATION
    state = np.empty(mujoco.mj_stateSize(model, sig))
    mujoco.mj_getState(model, data, state, sig)
    return state


def set_physics(model, data, state: np.ndarray) -> None:
    """Restore :func:`get_physics`' state and recompute the derived quantities."""
    import mujoco

    mujoco.mj_setState(model, data, np.asarray(state, np.float64), mujoco.mjtState.mjSTATE_INTEGRATION)
    mujoco.mj_forward(model, data)
