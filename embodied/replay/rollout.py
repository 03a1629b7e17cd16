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

Episode rewards (GVL, VLAC) label an episode only after it ended, on a worker thread. At
the end of a rollout some episodes are unfinished and some finished ones still wait for
their labels. Per env, the update then uses the longest prefix of its steps whose
episodes are all resolved (labeled, or failed and left out), and the rest of that env's
steps are **carried** to the front of the next rollout (:meth:`RolloutBuffer.carry`): they
join the next update once their labels arrived, with the behaviour log-probabilities
stored when they were acted (so the ratio corrects for the one policy update in
between) and values recomputed by the current critic. Each env's rows are then a ragged
time sequence (``length[n]`` rows, ``carried[n]`` of them from earlier rollouts); a
usable prefix always ends at an episode end, so GAE never needs a reward it lacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from embodied.replay.nstep import tree_to_torch


def gae(reward: np.ndarray, value: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
        final_value: np.ndarray, last_value: np.ndarray, gamma: float, lam: float,
        lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation over ``(T, N)`` arrays -> (advantages, returns).

    The value after step ``t`` is ``final_value[t]`` when step ``t`` was truncated, else
    ``value[t + 1]`` (``last_value`` after the last step). A termination bootstraps
    nothing (and wins when both flags are set); the recursion restarts at every episode end::

        delta_t = r_t + gamma * (1 - terminated_t) * V_next_t - V_t
        A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1}
        R_t     = A_t + V_t

    ``lengths`` (N,): env ``n`` holds only its first ``lengths[n]`` rows (a ragged rollout);
    its last step bootstraps from ``last_value[n]`` and the rows after it are 0.
    ``gamma`` may be a ``(T, N)`` array: a semi-MDP's ``gamma ** steps`` per decision
    (:func:`chunk_decisions`).
    """
    T, N = reward.shape[:2]
    gamma = np.broadcast_to(np.asarray(gamma, np.float32), reward.shape)
    lengths = np.full(N, T) if lengths is None else np.asarray(lengths, np.int64)
    last_value = np.asarray(last_value, np.float32)
    next_value = np.zeros(reward.shape, np.float32)
    next_value[:-1] = value[1:]
    ends = np.flatnonzero(lengths > 0)
    next_value[lengths[ends] - 1, ends] = last_value[ends]
    next_value = np.where(truncated, final_value, next_value)
    adv = np.zeros(reward.shape, np.float32)
    running = np.zeros(reward.shape[1:], np.float32)
    for t in reversed(range(T)):
        delta = reward[t] + gamma[t] * np.where(terminated[t], 0.0, next_value[t]) - value[t]
        running = delta + gamma[t] * lam * np.where(terminated[t] | truncated[t], 0.0, running)
        running = np.where(t < lengths, running, 0.0)
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


def _write(store: Any, rows: np.ndarray, x: Any, name: str) -> None:
    """Write one step of N envs: env ``n``'s entry at row ``rows[n]``."""
    if isinstance(store, dict):
        if set(x) != set(store):
            raise ValueError(f"{name} keys {sorted(x)} differ from the first step's {sorted(store)}")
        for k in store:
            _write(store[k], rows, x[k], f"{name}[{k!r}]")
    elif isinstance(store, list):
        for n, r in enumerate(rows.tolist()):
            if store[r] is None:
                store[r] = [None] * len(rows)
            store[r][n] = list(x)[n]
    else:
        if np.shape(x) != store.shape[1:]:
            raise ValueError(f"{name} must have shape {store.shape[1:]}, got {np.shape(x)}")
        store[rows, np.arange(len(rows))] = x


def _grow(store: Any, extra: int) -> Any:
    """``extra`` more rows at the end of every array (lists get None rows)."""
    if isinstance(store, dict):
        return {k: _grow(v, extra) for k, v in store.items()}
    if isinstance(store, list):
        return store + [None] * extra
    return np.concatenate([store, np.zeros((extra, *store.shape[1:]), store.dtype)])


def _shift(store: Any, n: int, start: int, count: int) -> None:
    """Move env ``n``'s rows ``start .. start + count`` to rows ``0 .. count``."""
    if isinstance(store, dict):
        for v in store.values():
            _shift(v, n, start, count)
    elif isinstance(store, list):
        for r in range(count):
            store[r][n] = store[start + r][n]
    elif start:
        store[:count, n] = store[start:start + count, n].copy()


def _rows(store: Any, ts: np.ndarray, ns: np.ndarray) -> Any:
    if isinstance(store, dict):
        return {k: _rows(v, ts, ns) for k, v in store.items()}
    if isinstance(store, list):
        return [store[t][n] for t, n in zip(ts, ns)]
    return store[ts, ns]


@dataclass
class Decisions:
    """A rollout of a chunked policy collapsed to its decisions (see :func:`chunk_decisions`);
    ``(D, N)`` arrays, env ``n``'s first ``lengths[n]`` rows real."""
    rows: np.ndarray  # (D, N) int: the rollout row each decision was drawn at (-1 past lengths)
    steps: np.ndarray  # (D, N) int: env steps the decision's chunk played
    reward: np.ndarray  # (D, N): sum_k gamma^k r over those steps
    discount: np.ndarray  # (D, N): gamma ** steps
    terminated: np.ndarray
    truncated: np.ndarray
    final_value: np.ndarray
    lengths: np.ndarray  # (N,)


def chunk_decisions(chunk_index: np.ndarray, reward: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
                    final_value: np.ndarray, lengths: np.ndarray, gamma: float) -> Decisions:
    """A chunked policy's rollout as a semi-MDP: a decision at every row whose chunk was drawn
    there (``chunk_index == 0``); it lasts until the next decision or the env's last row, and
    carries the discounted reward of those steps, ``gamma ** steps`` as its discount, and the
    end flags (and the true final value) of its last step. An episode end always ends a
    decision (the executor draws afresh after a reset); each env's rows must begin with one."""
    chunk_index = np.asarray(chunk_index)
    T, N = reward.shape
    per_env = []
    for n in range(N):
        m = int(lengths[n])
        starts = np.flatnonzero(chunk_index[:m, n] == 0)
        if m and (not starts.size or starts[0] != 0):
            raise ValueError(f"env {n}'s rollout rows begin mid-chunk (chunk_index {int(chunk_index[0, n])}): a chunked "
                             "policy's rollout must start where its chunks are drawn (the loop resets the executor)")
        ends = np.append(starts[1:], m) - 1
        done = (terminated[:m, n] | truncated[:m, n])
        inner = np.flatnonzero(done[:-1] if m else done)
        if inner.size and not np.isin(inner + 1, starts).all():
            raise ValueError(f"env {n}: an episode ended inside a chunk without a new chunk drawn after it")
        per_env.append((starts, ends))
    D = max((len(s) for s, _ in per_env), default=0)
    out = Decisions(rows=np.full((D, N), -1, np.int64), steps=np.zeros((D, N), np.int64),
                    reward=np.zeros((D, N), np.float32), discount=np.ones((D, N), np.float32),
                    terminated=np.zeros((D, N), bool), truncated=np.zeros((D, N), bool),
                    final_value=np.zeros((D, N), np.float32), lengths=np.zeros(N, np.int64))
    for n, (starts, ends) in enumerate(per_env):
        k = len(starts)
        out.lengths[n] = k
        out.rows[:k, n], out.steps[:k, n] = starts, ends - starts + 1
        for j, (a, b) in enumerate(zip(starts, ends)):
            powers = gamma ** np.arange(b - a + 1)
            out.reward[j, n] = float((powers * reward[a:b + 1, n]).sum())
        out.discount[:k, n] = gamma ** out.steps[:k, n]
        out.terminated[:k, n], out.truncated[:k, n] = terminated[ends, n], truncated[ends, n]
        out.final_value[:k, n] = final_value[ends, n]
    return out


class RolloutBuffer:
    """``num_steps`` steps of ``num_envs`` envs for one PPO update; :meth:`reset` reuses it.

    ``add`` takes ``(N, ...)`` arrays (``obs`` a batch of observations, ``extras`` e.g.
    action tokens, ``meta`` bookkeeping the learner does not read); the layout is fixed by
    the first step. Env ``n`` holds ``length[n]`` rows: the ``carried[n]`` rows
    :meth:`carry` kept from earlier rollouts, then this rollout's ``t`` steps (without
    carrying every env holds exactly ``t`` rows and the arrays are ``(T, N, ...)``).
    ``valid`` marks the rows an update trains on (all stored rows unless set).
    """

    def __init__(self, num_steps: int, num_envs: int):
        if num_steps < 1 or num_envs < 1:
            raise ValueError(f"num_steps and num_envs must be >= 1, got {num_steps}, {num_envs}")
        self.num_steps, self.num_envs = int(num_steps), int(num_envs)
        self.data: dict[str, Any] | None = None
        self.length = np.zeros(self.num_envs, np.int64)
        self.carried = np.zeros(self.num_envs, np.int64)
        self.reset()

    def reset(self) -> None:
        """Start the next rollout (storage is kept, nothing carried)."""
        self.t = 0
        self.length[:] = 0
        self.carried[:] = 0
        self.valid = None
        self.advantage = self.returns = None

    def carry(self, keep_from) -> None:
        """Start the next rollout with env ``n``'s rows from ``keep_from[n]`` on moved to its front."""
        keep_from = np.asarray(keep_from, np.int64)
        if keep_from.shape != (self.num_envs,) or (keep_from < 0).any() or (keep_from > self.length).any():
            raise ValueError(f"carry takes one start row per env within the {self.length.tolist()} rows stored, "
                             f"got {keep_from.tolist()}")
        for n in range(self.num_envs):
            _shift(self.data, n, int(keep_from[n]), int(self.length[n] - keep_from[n]))
        self.length = self.length - keep_from
        self.carried = self.length.copy()
        self.t = 0
        self.valid = None
        self.advantage = self.returns = None

    @property
    def full(self) -> bool:
        return self.t == self.num_steps

    @property
    def stored(self) -> np.ndarray:
        """(rows, N) bool: the rows each env holds."""
        rows = len(self.data["reward"]) if self.data is not None else 0
        return np.arange(rows)[:, None] < self.length[None, :]

    @property
    def mask(self) -> np.ndarray:
        """(rows, N) bool: the rows an update trains on."""
        return self.stored if self.valid is None else self.valid & self.stored

    def add(self, obs: dict, action, log_prob, value, reward, terminated, truncated,
            final_value=None, extras: dict | None = None, meta: dict | None = None) -> None:
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
                "extras": {k: np.asarray(v) for k, v in (extras or {}).items()},
                "meta": {k: np.asarray(v) for k, v in (meta or {}).items()}}
        for key in ("log_prob", "value", "reward", "terminated", "truncated", "final_value"):
            if step[key].shape != (N,):
                raise ValueError(f"{key} must have shape ({N},), got {step[key].shape}")
        if self.data is None:
            self.data = _alloc(step, self.num_steps)
        rows = len(self.data["reward"])
        if self.length.max() >= rows:  # carried rows + this rollout outgrow the storage
            self.data = _grow(self.data, max(self.num_steps, rows // 2))
        _write(self.data, self.length, step, "step")
        self.length += 1
        self.t += 1
        self.advantage = self.returns = None

    def set_rewards(self, reward, valid=None) -> None:
        """Replace the rewards of a full rollout (labels that arrived after the steps); ``valid``
        (same shape, bool) limits the update to the rows whose labels are known."""
        reward = np.asarray(reward, np.float32)
        shape = self.data["reward"].shape if self.data is not None else (self.num_steps, self.num_envs)
        if not self.full or reward.shape != shape:
            raise ValueError(f"set_rewards takes {shape} rewards of a full rollout, "
                             f"got {reward.shape} with {self.t} steps stored")
        self.data["reward"][:] = reward
        self.valid = None if valid is None else np.asarray(valid, bool)
        self.advantage = self.returns = None

    def compute_gae(self, last_value, gamma: float = 0.99, lam: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Advantages and returns per stored row; ``last_value`` is V(obs after the last step), (N,)."""
        if not self.full:
            raise ValueError(f"compute_gae needs a full rollout: {self.t} of {self.num_steps} steps stored")
        d = self.data
        self.advantage, self.returns = gae(d["reward"], d["value"], d["terminated"], d["truncated"],
                                           d["final_value"], np.asarray(last_value, np.float32), gamma, lam,
                                           lengths=self.length)
        return self.advantage, self.returns

    def minibatches(self, num_minibatches: int, rng: np.random.Generator, device=None) -> Iterator[dict]:
        """One epoch: the rows of :attr:`mask` shuffled and split into ``num_minibatches`` dicts
        (the stored fields plus ``advantage`` and ``return``); tensors on ``device`` if given."""
        if self.advantage is None:
            raise ValueError("call compute_gae before minibatches")
        ts, ns = np.nonzero(self.mask)
        order = rng.permutation(len(ts))
        for part in np.array_split(order, num_minibatches):
            t, n = ts[part], ns[part]
            batch = _rows({k: v for k, v in self.data.items() if k != "meta"}, t, n)
            batch["advantage"], batch["return"] = self.advantage[t, n], self.returns[t, n]
            yield batch if device is None else tree_to_torch(batch, device)

    def refresh_values(self, value_fn, final_obs_fn=None) -> int:
        """Recompute V of the carried rows with ``value_fn`` (the critic after the update(s) they
        missed), and with ``final_obs_fn(slots) -> obs batch`` also V(true final obs) of the
        carried rows that truncated (their bootstrap); returns how many rows it valued."""
        stored = self.stored
        carried = stored & (np.arange(len(self.data["reward"]))[:, None] < self.carried[None, :])
        ts, ns = np.nonzero(carried)
        if len(ts):
            self.data["value"][ts, ns] = np.asarray(value_fn(_rows(self.data["obs"], ts, ns)), np.float32)
        cut = carried & self.data["truncated"] & ~self.data["terminated"]
        if final_obs_fn is not None and cut.any():
            tt, nn = np.nonzero(cut)
            obs = final_obs_fn(self.data["meta"]["slot"][tt, nn])
            self.data["final_value"][tt, nn] = np.asarray(value_fn(obs), np.float32)
        return len(ts)


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
    from the replay and returns the filled buffer; :meth:`begin` starts the next rollout
    (with the steps :meth:`finish` could not use yet carried into it).
    """

    def __init__(self, num_steps: int, num_envs: int, keys, value_fn):
        self.buffer = RolloutBuffer(num_steps, num_envs)
        self.keys, self.value_fn = list(keys), value_fn
        self._step: list = []
        self._usable: np.ndarray | None = None  # per env: rows the last finish() resolved

    def reset(self) -> None:
        """Start from an empty rollout (nothing carried)."""
        self.buffer.reset()
        self._step.clear()
        self._usable = None

    def carry_all(self) -> None:
        """Train nothing of this rollout yet: :meth:`begin` carries every row (too few resolved
        rows for an update)."""
        if self._usable is not None:
            self._usable = np.zeros_like(self._usable)
            self.buffer.valid = np.zeros_like(self.buffer.stored)

    @property
    def carrying(self) -> int:
        """Rows the next :meth:`begin` carries (0 when everything was resolved)."""
        return 0 if self._usable is None else int((self.buffer.length - self._usable).sum())

    def begin(self) -> None:
        """Start the next rollout: rows the last :meth:`finish` left unresolved stay, in order."""
        if self._usable is None:
            self.reset()
        else:
            self.buffer.carry(self._usable)
            self._step.clear()
            self._usable = None

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
        meta = {"slot": np.array([s for _, s in self._step], np.int64),
                "episode": np.array([t.episode_id for t in ts], np.int64)}
        self.buffer.add(_stack([t.obs for t in ts], self.keys), np.stack([t.action for t in ts]),
                        log_prob=np.stack([t.extras["log_prob"] for t in ts]),
                        value=np.stack([t.extras["value"] for t in ts]), reward=[t.reward for t in ts],
                        terminated=[t.terminated for t in ts], truncated=[t.truncated for t in ts],
                        final_value=final_value, extras=extras, meta=meta)
        self._step.clear()

    def finish(self, replay, unresolved: set[int] | None = None) -> RolloutBuffer:
        """The full rollout, its rewards the labels ``replay`` holds for its steps now.

        ``unresolved``: ids of episodes whose labels may still come (running, or queried and
        not answered); None means every step must be labeled already (env reward, frame
        models). With it, env ``n`` trains on the rows before its first unresolved step, minus
        the steps of episodes whose labeling failed; the rows from there on are carried by
        the next :meth:`begin`.
        """
        buf = self.buffer
        if not buf.full:
            raise ValueError(f"the rollout holds {buf.t} of {buf.num_steps} steps")
        stored = buf.stored
        slots, episodes = buf.data["meta"]["slot"], buf.data["meta"]["episode"]
        kept = replay.episode_id[slots] == episodes
        if not kept[stored].all():
            raise ValueError(f"{int((~kept & stored).sum())} steps of the rollout were overwritten in the replay "
                             "before their labels arrived: raise train.replay_capacity")
        labeled = replay.labeled[slots] & stored
        if unresolved is None:
            if not labeled[stored].all():
                raise ValueError(f"{int((stored & ~labeled).sum())} steps of the rollout have no reward label yet; "
                                 "on-policy learners need frame rewards (labeled inline) or the env reward")
            self._usable = None
            buf.set_rewards(np.where(stored, replay.reward[slots], 0.0))
            return buf
        waiting = stored & np.isin(episodes, np.fromiter(unresolved, np.int64, len(unresolved)))
        first = np.where(waiting.any(0), waiting.argmax(0), buf.length)  # per env: its first unresolved row
        usable = np.arange(len(stored))[:, None] < first[None, :]
        self._usable = first
        buf.set_rewards(np.where(usable & labeled, replay.reward[slots], 0.0), valid=usable & labeled)
        return buf
