"""On-policy rollouts for PPO: a fixed ``(T, N)`` buffer filled step by step from N vector envs.

Step ``t`` stores, for every env, the observation the policy acted on, the action, its
behaviour log-probability and value (recorded at rollout time, never recomputed), the
reward, ``terminated`` and ``truncated``, and for truncated steps the value of the TRUE
final observation: with gymnasium's SAME_STEP autoreset the env returns the next
episode's first observation, so the policy must be asked for ``V(info["final_obs"])``.

After ``T`` steps, :meth:`RolloutBuffer.compute_gae` turns them into advantages and
returns, and :meth:`RolloutBuffer.minibatches` serves shuffled flat minibatches.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from embodied.replay.nstep import tree_to_torch


def gae(reward: np.ndarray, value: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
        final_value: np.ndarray, last_value: np.ndarray, gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation over ``(T, N)`` arrays -> (advantages, returns).

    The value after step ``t`` is ``final_value[t]`` when step ``t`` was truncated, else
    ``value[t + 1]`` (``last_value`` after the last step). A termination bootstraps
    nothing (and wins when both flags are set); the recursion restarts at every episode end::

        delta_t = r_t + gamma * (1 - terminated_t) * V_next_t - V_t
        A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1}
        R_t     = A_t + V_t
    """
    T = reward.shape[0]
    adv = np.zeros(reward.shape, np.float32)
    running = np.zeros(reward.shape[1:], np.float32)
    for t in reversed(range(T)):
        next_value = last_value if t == T - 1 else value[t + 1]
        next_value = np.where(truncated[t], final_value[t], next_value)
        delta = reward[t] + gamma * np.where(terminated[t], 0.0, next_value) - value[t]
        running = delta + gamma * lam * np.where(terminated[t] | truncated[t], 0.0, running)
        adv[t] = running
    return adv, (adv + value).astype(np.float32)


def _alloc(x: Any, T: int) -> Any:
    """Storage for T steps shaped like one step's batch ``x`` (lists of str stay lists)."""
    if isinstance(x, dict):
        return {k: _alloc(v, T) for k, v in x.items()}
    if isinstance(x, list):
        return [None] * T
    x = np.asarray(x)
    return np.zeros((T, *x.shape), x.dtype)


def _write(store: Any, t: int, x: Any, name: str) -> None:
    if isinstance(store, dict):
        if set(x) != set(store):
            raise ValueError(f"{name} keys {sorted(x)} differ from the first step's {sorted(store)}")
        for k in store:
            _write(store[k], t, x[k], f"{name}[{k!r}]")
    elif isinstance(store, list):
        store[t] = list(x)
    else:
        if np.shape(x) != store.shape[1:]:
            raise ValueError(f"{name} must have shape {store.shape[1:]}, got {np.shape(x)}")
        store[t] = x


def _rows(store: Any, ts: np.ndarray, ns: np.ndarray) -> Any:
    if isinstance(store, dict):
        return {k: _rows(v, ts, ns) for k, v in store.items()}
    if isinstance(store, list):
        return [store[t][n] for t, n in zip(ts, ns)]
    return store[ts, ns]


class RolloutBuffer:
    """``num_steps`` steps of ``num_envs`` envs for one PPO update; :meth:`reset` reuses it.

    ``add`` takes ``(N, ...)`` arrays (``obs`` a batch of observations, ``extras`` e.g.
    action tokens); the layout is fixed by the first step.
    """

    def __init__(self, num_steps: int, num_envs: int):
        if num_steps < 1 or num_envs < 1:
            raise ValueError(f"num_steps and num_envs must be >= 1, got {num_steps}, {num_envs}")
        self.num_steps, self.num_envs = int(num_steps), int(num_envs)
        self.data: dict[str, Any] | None = None
        self.reset()

    def reset(self) -> None:
        """Start the next rollout (storage is kept)."""
        self.t = 0
        self.advantage = self.returns = None

    @property
    def full(self) -> bool:
        return self.t == self.num_steps

    def add(self, obs: dict, action, log_prob, value, reward, terminated, truncated,
            final_value=None, extras: dict | None = None) -> None:
        """Store one step of all envs. ``final_value[i]`` is V(true final obs) where env ``i`` truncated."""
        if self.full:
            raise ValueError(f"rollout buffer is full ({self.num_steps} steps): compute_gae, train, reset")
        N = self.num_envs
        truncated = np.asarray(truncated, bool)
        if final_value is None:
            if truncated.any():
                raise ValueError("truncated steps need final_value: the value of the true final observation")
            final_value = np.zeros(N, np.float32)
        step = {"obs": dict(obs), "action": np.asarray(action, np.float32),
                "log_prob": np.asarray(log_prob, np.float32), "value": np.asarray(value, np.float32),
                "reward": np.asarray(reward, np.float32), "terminated": np.asarray(terminated, bool),
                "truncated": truncated, "final_value": np.asarray(final_value, np.float32),
                "extras": {k: np.asarray(v) for k, v in (extras or {}).items()}}
        for key in ("log_prob", "value", "reward", "terminated", "truncated", "final_value"):
            if step[key].shape != (N,):
                raise ValueError(f"{key} must have shape ({N},), got {step[key].shape}")
        if self.data is None:
            self.data = _alloc(step, self.num_steps)
        _write(self.data, self.t, step, "step")
        self.t += 1
        self.advantage = self.returns = None

    def compute_gae(self, last_value, gamma: float = 0.99, lam: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """(T, N) advantages and returns; ``last_value`` is V(obs after the last step), (N,)."""
        if not self.full:
            raise ValueError(f"compute_gae needs a full rollout: {self.t} of {self.num_steps} steps stored")
        d = self.data
        self.advantage, self.returns = gae(d["reward"], d["value"], d["terminated"], d["truncated"],
                                           d["final_value"], np.asarray(last_value, np.float32), gamma, lam)
        return self.advantage, self.returns

    def minibatches(self, num_minibatches: int, rng: np.random.Generator, device=None) -> Iterator[dict]:
        """One epoch: the ``T * N`` rows shuffled and split into ``num_minibatches`` dicts
        (the stored fields plus ``advantage`` and ``return``); tensors on ``device`` if given."""
        if self.advantage is None:
            raise ValueError("call compute_gae before minibatches")
        rows = rng.permutation(self.num_steps * self.num_envs)
        for part in np.array_split(rows, num_minibatches):
            ts, ns = np.divmod(part, self.num_envs)
            batch = _rows(self.data, ts, ns)
            batch["advantage"], batch["return"] = self.advantage[ts, ns], self.returns[ts, ns]
            yield batch if device is None else tree_to_torch(batch, device)
