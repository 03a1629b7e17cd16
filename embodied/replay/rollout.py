"""On-policy rollouts for PPO: a fixed ``(T, N)`` buffer filled step by step from N vector envs.

Step ``t`` stores, for every env, the observation the policy acted on, the action, its
behaviour log-probability and value (recorded at rollout time, never recomputed), the
reward, ``terminated`` and ``truncated``, and for truncated steps the value of the TRUE
final observation: with gymnasium's SAME_STEP autoreset the env returns the next
episode's first observation, so the policy must be asked for ``V(info["final_obs"])``.

After ``T`` steps, :meth:`RolloutBuffer.compute_gae` turns them into advantages and
returns, and :meth:`RolloutBuffer.minibatches` serves shuffled flat minibatches.

:class:`RolloutCollector` fills a buffer from the Driver's transition stream (the training
loop's on-policy path) and reads each step's reward label from the replay storage the
reward labeler writes into, once the rollout is complete.
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

    def set_rewards(self, reward) -> None:
        """Replace the (T, N) rewards of a full rollout (labels that arrived after the steps)."""
        reward = np.asarray(reward, np.float32)
        if not self.full or reward.shape != (self.num_steps, self.num_envs):
            raise ValueError(f"set_rewards takes ({self.num_steps}, {self.num_envs}) rewards of a full rollout, "
                             f"got {reward.shape} with {self.t} steps stored")
        self.data["reward"][:] = reward
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


def _stack(observations: list[dict], keys) -> dict[str, Any]:
    """Per-env observations -> one batch of the ``keys`` the learner reads (pixels nested)."""
    out: dict[str, Any] = {}
    for key in keys:
        first = observations[0][key]
        if isinstance(first, dict):
            out[key] = {c: np.stack([o[key][c] for o in observations]) for c in first}
        else:
            out[key] = np.stack([np.asarray(o[key]) for o in observations])
    return out


class RolloutCollector:
    """Driver transitions -> a :class:`RolloutBuffer`, one step of all ``num_envs`` envs at a time.

    Register :meth:`add` (with the replay slot the labeler stored the transition in) as the
    Driver's transition callback; it calls it env by env. ``keys`` are the observation keys
    the learner reads; ``value_fn(obs_batch) -> (B,)`` values the true final observation of
    every env that truncated. :meth:`finish` reads the reward labels of the whole rollout
    from the replay and returns the filled buffer.
    """

    def __init__(self, num_steps: int, num_envs: int, keys, value_fn):
        self.buffer = RolloutBuffer(num_steps, num_envs)
        self.slots = np.zeros((num_steps, num_envs), np.int64)
        self.keys, self.value_fn = list(keys), value_fn
        self._step: list = []

    def reset(self) -> None:
        self.buffer.reset()
        self._step.clear()

    def add(self, t, env_index: int, slot: int) -> None:
        if env_index != len(self._step):
            raise ValueError(f"transitions of one step must arrive env by env, got env {env_index} after "
                             f"{len(self._step)}")
        self._step.append((t, int(slot)))
        if len(self._step) == self.buffer.num_envs:
            self._push()

    def _push(self) -> None:
        ts = [t for t, _ in self._step]
        final_value = np.zeros(len(ts), np.float32)
        truncated = [i for i, t in enumerate(ts) if t.truncated and not t.terminated]
        if truncated:  # SAME_STEP autoreset: next_obs of an ended episode is its true final observation
            final_value[truncated] = self.value_fn(_stack([ts[i].next_obs for i in truncated], self.keys))
        missing = {"log_prob", "value"} - set(ts[0].extras)
        if missing:
            raise ValueError(f"an on-policy rollout needs the policy step's {sorted(missing)} in each transition")
        extras = {k: np.stack([t.extras[k] for t in ts]) for k in ts[0].extras if k not in ("log_prob", "value")}
        self.slots[self.buffer.t] = [s for _, s in self._step]
        self.buffer.add(_stack([t.obs for t in ts], self.keys), np.stack([t.action for t in ts]),
                        log_prob=np.stack([t.extras["log_prob"] for t in ts]),
                        value=np.stack([t.extras["value"] for t in ts]), reward=[t.reward for t in ts],
                        terminated=[t.terminated for t in ts], truncated=[t.truncated for t in ts],
                        final_value=final_value, extras=extras)
        self._step.clear()

    def finish(self, replay) -> RolloutBuffer:
        """The full rollout, its rewards the labels ``replay`` holds for its steps now."""
        if not self.buffer.full:
            raise ValueError(f"the rollout holds {self.buffer.t} of {self.buffer.num_steps} steps")
        labeled = replay.labeled[self.slots]
        if not labeled.all():
            raise ValueError(f"{int((~labeled).sum())} steps of the rollout have no reward label yet; on-policy "
                             "learners need frame rewards (labeled inline) or the env reward")
        self.buffer.set_rewards(replay.reward[self.slots])
        return self.buffer
