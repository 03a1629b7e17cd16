"""``check_env``: the one contract check every environment passes.

Runs against a single ``gymnasium.Env`` or a gymnasium vector env; raises
``AssertionError`` with a message naming the broken convention. The real-robot team runs
the same function on the sim robot behind the ZMQ bridge.
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from embodied.contracts import OBS_KEYS


def check_env(env: gym.Env | gym.vector.VectorEnv, steps: int = 20, seed: int = 0,
              info_keys: Sequence[str] = ("success", "progress"),
              check_determinism: bool = True, check_time_limit: bool = True) -> None:
    """Check spaces, reset/step semantics, info ground truth, determinism, time limit.

    steps: how many random steps to take (the time-limit check may run up to the limit).
    info_keys: ground-truth keys the env promises in ``info`` (``success``: bool,
    ``progress``: float in [0, 1]).
    check_time_limit: step until the time limit and expect ``truncated=True`` exactly
    there (only when the limit is known and at most ``4 * steps + 50``).
    """
    if isinstance(env, gym.vector.VectorEnv):
        _check_vector(env, steps, seed, info_keys, check_determinism)
        return
    _check_spaces(env.observation_space, env.action_space)
    obs, info = env.reset(seed=seed)
    _check_obs(env.observation_space, obs, "reset")
    _check_info(info, info_keys, "reset")
    rng = np.random.default_rng(seed)
    actions = [_sample_action(env.action_space, rng) for _ in range(steps)]
    for t, action in enumerate(actions):
        obs, reward, terminated, truncated, info = _check_step_result(env.step(action), f"step {t}")
        _check_obs(env.observation_space, obs, f"step {t}")
        _check_info(info, info_keys, f"step {t}")
        if terminated or truncated:
            obs, info = env.reset()
            _check_obs(env.observation_space, obs, f"reset after step {t}")
    _check_render(env)
    if check_determinism:
        first, second = _rollout(env, seed, actions), _rollout(env, seed, actions)
        _assert_same(first, second, "two rollouts with the same seed and actions")
    if check_time_limit:
        limit = time_limit(env)
        if limit is not None and limit <= 4 * steps + 50:
            _check_truncation(env, limit, seed)


def _check_render(env: gym.Env) -> None:
    """Every env renders an RGB frame on demand (evaluation videos), pixels observed or not."""
    frame = env.render()
    assert isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[-1] == 3, \
        f"render() must return an (H, W, 3) uint8 frame whether or not pixels are observed, got " \
        f"{type(frame).__name__} {getattr(frame, 'shape', '')}"


def _check_spaces(obs_space: spaces.Space, act_space: spaces.Space) -> None:
    assert isinstance(obs_space, spaces.Dict), f"observation_space must be spaces.Dict, got {obs_space}"
    extra = set(obs_space.spaces) - set(OBS_KEYS)
    assert not extra, f"observation keys {sorted(extra)} are not in the contract {OBS_KEYS}"
    assert "instruction" in obs_space.spaces, "observation_space lacks 'instruction'"
    assert isinstance(obs_space["instruction"], spaces.Text), "'instruction' must be spaces.Text"
    assert "state" in obs_space.spaces or "pixels" in obs_space.spaces, "need 'state' or 'pixels'"
    if "state" in obs_space.spaces:
        s = obs_space["state"]
        assert isinstance(s, spaces.Box) and s.dtype == np.float32 and len(s.shape) == 1, \
            f"'state' must be a 1-D float32 Box, got {s}"
    if "pixels" in obs_space.spaces:
        pix = obs_space["pixels"]
        assert isinstance(pix, spaces.Dict) and len(pix.spaces) > 0, "'pixels' must be a Dict of cameras"
        for cam, box in pix.spaces.items():
            assert isinstance(box, spaces.Box) and box.dtype == np.uint8, f"camera {cam!r} must be uint8 Box"
            assert len(box.shape) == 3 and box.shape[2] == 3, f"camera {cam!r} must be (H, W, 3), got {box.shape}"
            assert np.all(box.low == 0) and np.all(box.high == 255), f"camera {cam!r} bounds must be 0..255"
    if isinstance(act_space, spaces.MultiDiscrete):  # discrete tasks: one choice per dimension
        assert len(act_space.shape) == 1 and np.all(act_space.start == 0), "MultiDiscrete actions must be 1-D from 0"
        return
    assert isinstance(act_space, spaces.Box), f"action_space must be a Box or MultiDiscrete, got {act_space}"
    assert act_space.dtype == np.float32 and len(act_space.shape) == 1, "action_space must be 1-D float32"
    assert np.all(act_space.low == -1) and np.all(act_space.high == 1), "action bounds must be [-1, 1]"


def _check_obs(space: spaces.Dict, obs: Any, where: str) -> None:
    assert isinstance(obs, dict), f"{where}: observation must be a dict, got {type(obs).__name__}"
    assert set(obs) == set(space.spaces), f"{where}: obs keys {sorted(obs)} != space keys {sorted(space.spaces)}"
    if "state" in obs:
        s = obs["state"]
        assert isinstance(s, np.ndarray) and s.dtype == np.float32, f"{where}: state must be float32 ndarray"
        assert s.shape == space["state"].shape, f"{where}: state shape {s.shape} != {space['state'].shape}"
        assert np.all(np.isfinite(s)), f"{where}: state has non-finite values"
    if "pixels" in obs:
        assert set(obs["pixels"]) == set(space["pixels"].spaces), f"{where}: camera names differ from the space"
        for cam, img in obs["pixels"].items():
            box = space["pixels"][cam]
            assert isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.shape == box.shape, \
                f"{where}: camera {cam!r} image must be uint8 {box.shape}, got {getattr(img, 'dtype', None)} " \
                f"{getattr(img, 'shape', None)}"
    instruction = obs["instruction"]
    assert isinstance(instruction, str) and instruction.strip(), f"{where}: instruction must be non-empty text"
    assert space.contains(obs), f"{where}: observation is not in observation_space"


def _check_info(info: Any, keys: Sequence[str], where: str) -> None:
    assert isinstance(info, dict), f"{where}: info must be a dict"
    for key in keys:
        assert key in info, f"{where}: info lacks {key!r}"
    if "success" in info:
        assert isinstance(info["success"], (bool, np.bool_)), f"{where}: info['success'] must be bool"
    if "progress" in info:
        p = info["progress"]
        assert isinstance(p, numbers.Real) and 0.0 <= p <= 1.0, f"{where}: info['progress'] must be in [0, 1], got {p}"


def _check_step_result(result: Any, where: str) -> tuple:
    assert isinstance(result, tuple) and len(result) == 5, f"{where}: step must return 5 values"
    obs, reward, terminated, truncated, info = result
    assert isinstance(reward, numbers.Real) and np.isfinite(reward), f"{where}: reward must be a finite float"
    for name, flag in (("terminated", terminated), ("truncated", truncated)):
        assert isinstance(flag, (bool, np.bool_)), f"{where}: {name} must be bool, got {type(flag).__name__}"
    return result


def _sample_action(space: spaces.Space, rng: np.random.Generator) -> np.ndarray:
    if isinstance(space, spaces.MultiDiscrete):
        return rng.integers(0, space.nvec).astype(np.float32)
    return rng.uniform(-1.0, 1.0, space.shape).astype(np.float32)


def _rollout(env: gym.Env, seed: int, actions: list[np.ndarray]) -> list:
    obs, _ = env.reset(seed=seed)
    trace = [obs]
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        trace.append((obs, float(reward), bool(terminated), bool(truncated)))
        if terminated or truncated:
            break
    return trace


def _assert_same(a: Any, b: Any, what: str, path: str = "") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{what} differ at {path or 'top'}: keys"
        for k in a:
            _assert_same(a[k], b[k], what, f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{what} differ at {path or 'top'}: length"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, what, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), f"{what} differ at {path}"
    else:
        assert a == b, f"{what} differ at {path}: {a!r} != {b!r}"


def time_limit(env: gym.Env) -> int | None:
    spec = getattr(env, "spec", None)
    if spec is not None and spec.max_episode_steps:
        return int(spec.max_episode_steps)
    inner = env
    while inner is not None:
        if isinstance(inner, gym.wrappers.TimeLimit):
            return int(inner._max_episode_steps)
        inner = getattr(inner, "env", None)
    return None


def _check_truncation(env: gym.Env, limit: int, seed: int) -> None:
    env.reset(seed=seed)
    zero = np.zeros(env.action_space.shape, np.float32)
    for t in range(1, limit + 1):
        _, _, terminated, truncated, _ = env.step(zero)
        if terminated and t < limit:
            return  # the task ended by itself before its time limit: nothing to check
        assert truncated == (t == limit), \
            f"time limit {limit}: truncated={truncated} at step {t} (expected only at step {limit})"


def _check_vector(env: gym.vector.VectorEnv, steps: int, seed: int, info_keys: Sequence[str],
                  check_determinism: bool) -> None:
    n = env.num_envs
    _check_spaces(env.single_observation_space, env.single_action_space)
    mode = env.metadata.get("autoreset_mode")
    assert mode == gym.vector.AutoresetMode.SAME_STEP, f"vector env autoreset must be SAME_STEP, got {mode}"
    obs, info = env.reset(seed=seed)
    _check_vector_obs(env, obs, "reset")
    first = _copy(obs)
    rng = np.random.default_rng(seed)
    saw_end = False
    for t in range(steps):
        action = rng.uniform(-1, 1, (n, *env.single_action_space.shape)).astype(np.float32)
        obs, reward, terminated, truncated, info = env.step(action)
        _check_vector_obs(env, obs, f"step {t}")
        assert reward.shape == (n,) and terminated.shape == (n,) and truncated.shape == (n,), \
            f"step {t}: reward/terminated/truncated must have shape ({n},)"
        for key in info_keys:
            assert key in info, f"step {t}: vector info lacks {key!r}"
        done = terminated | truncated
        if done.any():
            saw_end = True
            assert "final_obs" in info, f"step {t}: an episode ended but info has no 'final_obs'"
            for i in np.flatnonzero(done):
                _check_obs(env.single_observation_space, info["final_obs"][i], f"step {t} final_obs[{i}]")
    limit = time_limit(env.envs[0]) if isinstance(env, gym.vector.SyncVectorEnv) else None
    if limit is not None and limit <= steps:
        assert saw_end, f"no episode ended within {steps} steps despite a time limit of {limit}"
    if check_determinism:
        again, _ = env.reset(seed=seed)
        _assert_same(first, _copy(again), "two vector resets with the same seed")


def _check_vector_obs(env: gym.vector.VectorEnv, obs: Any, where: str) -> None:
    n = env.num_envs
    assert isinstance(obs, dict) and set(obs) == set(env.single_observation_space.spaces), \
        f"{where}: batched obs keys differ from the single observation space"
    instructions = obs["instruction"]
    assert len(instructions) == n and all(isinstance(s, str) and s for s in instructions), \
        f"{where}: obs['instruction'] must hold {n} non-empty strings, got {instructions!r}"
    if "state" in obs:
        assert obs["state"].shape == (n, *env.single_observation_space["state"].shape), f"{where}: state shape"
        assert obs["state"].dtype == np.float32, f"{where}: state must be float32"
    for cam, img in obs.get("pixels", {}).items():
        assert img.dtype == np.uint8 and img.shape[0] == n, f"{where}: camera {cam!r} batch must be uint8 (n, H, W, 3)"
    assert env.observation_space.contains(obs), f"{where}: batched observation is not in observation_space"


def _copy(obs: Any) -> Any:
    if isinstance(obs, dict):
        return {k: _copy(v) for k, v in obs.items()}
    if isinstance(obs, np.ndarray):
        return obs.copy()
    return obs
