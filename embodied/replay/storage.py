"""Replay storage: circular numpy columns where every observation is stored once.

Layout
    Slot ``i`` holds one transition: its observation (``state`` float32, one uint8 array
    per camera, an instruction id into a small vocabulary), action, reward, flags,
    episode bookkeeping and the policy's extras (one column per key). ``next_obs`` is
    *not* stored: it is the observation of the slot that holds the next step of the same
    episode (``next_slot[i]``), or, for the transition that ends an episode (terminated
    or truncated), an entry in a small side store of final observations. Pixels therefore
    cost about one uint8 frame per camera per transition.

Episodes
    Transitions are linked by ``episode_id`` and ``step``, not by slot adjacency, so
    several environments may add interleaved transitions (vectorised envs). Episode ids
    must be unique within one replay. The env loop uses gymnasium's SAME_STEP autoreset,
    so no fake "reset" transition ever arrives; a new episode is recognised by its
    ``episode_id`` (and ``is_first``). The last transition of an episode that never
    reports ``terminated``/``truncated`` has no next observation and is never sampled.
    Overwriting a slot unlinks it from its neighbours, so an observation is never paired
    with the next observation of another episode.

Extras
    :attr:`Transition.extras` (``log_prob``, ``value``, ``base_action``, tokens) are
    columns of a fixed shape and dtype per key. The layout comes from the ``extras``
    argument, ``{key: (shape, dtype)}``, or else from the first transition added; a
    transition whose extras differ from it is refused.

Reading
    The storage only stores; samplers read it (:mod:`embodied.replay.nstep` for n-step
    transitions, which :meth:`Replay.sample` uses, and the sequence and preference-pair
    samplers beside it) through :meth:`has_next`, :meth:`obs_at` and :meth:`next_obs_at`.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from embodied.contracts import Batch, Transition
from embodied.replay import state as replay_state
from embodied.replay.nstep import NStepSampler, to_torch

NONE = -1  # "no slot" in the link columns
ExtrasSpec = dict[str, tuple[tuple[int, ...], np.dtype]]


class Replay:
    """Circular replay with n-step returns and pixel observations stored once as uint8.

    ``final_capacity`` is the size of the side store of final observations (one per
    episode end held in the buffer). It defaults to ``capacity // 16 + 64`` (episodes
    averaging 16 steps or more never lose one); when it wraps while the episode's last
    transition is still stored, that transition stops being sampleable and a warning
    says to raise it. ``offline=True`` marks every row sampled from this replay with
    ``is_offline`` (demos, datasets); rows flagged ``intervention`` are marked too.
    ``extras`` fixes the layout of :attr:`Transition.extras`, e.g.
    ``{"log_prob": ((), np.float32), "base_action": ((A,), np.float32)}``.
    """

    def __init__(self, capacity: int, obs_space, action_space, *, n_step: int = 1,
                 gamma: float = 0.99, seed: int = 0, final_capacity: int | None = None,
                 offline: bool = False, extras: Mapping[str, tuple] | None = None):
        if capacity < 2:
            raise ValueError(f"replay capacity must be >= 2, got {capacity}")
        if n_step < 1:
            raise ValueError(f"n_step must be >= 1, got {n_step}")
        spaces = getattr(obs_space, "spaces", None)
        if spaces is None:
            raise ValueError("obs_space must be a gymnasium.spaces.Dict with 'state' and/or 'pixels'")
        self.capacity, self.n_step, self.gamma, self.offline = int(capacity), int(n_step), float(gamma), offline
        self.final_capacity = int(final_capacity or min(capacity, capacity // 16 + 64))
        self.has_state = "state" in spaces
        self.has_instruction = "instruction" in spaces
        self.cameras = list(spaces["pixels"].spaces) if "pixels" in spaces else []
        self.state_dim = int(np.prod(spaces["state"].shape)) if self.has_state else 0
        self.frame_shapes = {c: tuple(spaces["pixels"][c].shape) for c in self.cameras}
        self.action_dim = int(np.prod(action_space.shape))
        self._extras_arg: ExtrasSpec | None = None
        if extras is not None:
            self._extras_arg = {k: (tuple(shape), np.dtype(dtype)) for k, (shape, dtype) in extras.items()}
        self.extras_spec: ExtrasSpec | None = self._extras_arg  # None until the first transition
        self._rng = np.random.default_rng(seed)
        self.sampler = NStepSampler(self)  # what sample() draws with: n_step, gamma and rng of this replay
        self.vocab: list[str] = []
        self._vocab_ids: dict[str, int] = {}
        self._warned_final = False
        self._alloc()

    # ------------------------------------------------------------------ storage
    def _obs_arrays(self, n: int) -> dict[str, np.ndarray]:
        arrays = {"state": np.zeros((n, self.state_dim), np.float32)} if self.has_state else {}
        for cam, shape in self.frame_shapes.items():
            arrays[f"pixels.{cam}"] = np.zeros((n, *shape), np.uint8)
        if self.has_instruction:
            arrays["instruction"] = np.zeros(n, np.int32)
        return arrays

    def _alloc(self) -> None:
        n = self.capacity
        self.obs = self._obs_arrays(n)
        self.final = self._obs_arrays(self.final_capacity)
        self.action = np.zeros((n, self.action_dim), np.float32)
        self.reward = np.zeros(n, np.float32)
        self.labeled = np.zeros(n, bool)
        self.terminated = np.zeros(n, bool)
        self.truncated = np.zeros(n, bool)
        self.intervention = np.zeros(n, bool)
        self.episode_id = np.full(n, NONE, np.int64)
        self.step = np.zeros(n, np.int64)
        self.next_slot = np.full(n, NONE, np.int64)  # slot of the next step of this episode
        self.prev_slot = np.full(n, NONE, np.int64)
        self.final_idx = np.full(n, NONE, np.int64)  # index into the final-obs side store
        self.final_owner = np.full(self.final_capacity, NONE, np.int64)
        self.extras = {k: np.zeros((n, *shape), dtype) for k, (shape, dtype) in (self.extras_spec or {}).items()}
        self.ptr = self.size = self.final_ptr = 0
        self._open: dict[int, int] = {}  # episode_id -> slot of its newest step, while running

    def __len__(self) -> int:
        return self.size

    def num_labeled(self) -> int:
        return int(np.count_nonzero(self.labeled[: self.size]))

    def _write_obs(self, arrays: dict, i: int, obs: Mapping[str, Any], what: str) -> None:
        if self.has_state:
            state = np.asarray(obs.get("state"), np.float32).reshape(-1)
            if state.shape != (self.state_dim,):
                raise ValueError(f"{what}['state'] must have {self.state_dim} values, got shape {state.shape}")
            arrays["state"][i] = state
        for cam in self.cameras:
            frame = obs.get("pixels", {}).get(cam)
            if frame is None:
                raise ValueError(f"{what}['pixels'] lacks camera {cam!r}; the obs space has {self.cameras}")
            if frame.shape != self.frame_shapes[cam] or frame.dtype != np.uint8:
                raise ValueError(f"{what}['pixels'][{cam!r}] must be {self.frame_shapes[cam]} uint8, "
                                 f"got {frame.shape} {frame.dtype}")
            arrays[f"pixels.{cam}"][i] = frame
        if self.has_instruction:
            text = str(obs.get("instruction", ""))
            if text not in self._vocab_ids:
                self._vocab_ids[text] = len(self.vocab)
                self.vocab.append(text)
            arrays["instruction"][i] = self._vocab_ids[text]

    def _check_extras(self, extras: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Extras as arrays of this replay's layout (learned from the first transition)."""
        arrays = {k: np.asarray(v) for k, v in extras.items()}
        if self.extras_spec is None:
            self.extras_spec = {k: (v.shape, v.dtype) for k, v in arrays.items()}
            self.extras = {k: np.zeros((self.capacity, *v.shape), v.dtype) for k, v in arrays.items()}
        differ = sorted(set(arrays) ^ set(self.extras_spec))
        if differ:
            raise ValueError(f"transition extras key {differ[0]!r} does not match this replay's extras "
                             f"{sorted(self.extras_spec)}")
        for key, (shape, dtype) in self.extras_spec.items():
            if arrays[key].shape != shape or arrays[key].dtype != dtype:
                raise ValueError(f"extras[{key!r}] must be {shape} {dtype}, got {arrays[key].shape} "
                                 f"{arrays[key].dtype}")
        return arrays

    def _release(self, i: int) -> None:
        """Unlink slot ``i`` before it is overwritten."""
        prev, nxt = self.prev_slot[i], self.next_slot[i]
        if prev != NONE and self.next_slot[prev] == i:
            self.next_slot[prev] = NONE
        if nxt != NONE and self.prev_slot[nxt] == i:
            self.prev_slot[nxt] = NONE
        if self.final_idx[i] != NONE:
            self.final_owner[self.final_idx[i]] = NONE
        self.next_slot[i] = self.prev_slot[i] = self.final_idx[i] = NONE
        ep = int(self.episode_id[i])
        if self._open.get(ep) == i:
            del self._open[ep]

    def add(self, t: Transition, *, labeled: bool = True) -> int:
        """Store one transition; returns its slot. ``labeled=False`` waits for a reward label."""
        action = np.asarray(t.action, np.float32).reshape(-1)
        if action.shape != (self.action_dim,):
            raise ValueError(f"action must have {self.action_dim} values, got shape {np.shape(t.action)}")
        extras = self._check_extras(t.extras)
        i = self.ptr
        self._release(i)
        self._write_obs(self.obs, i, t.obs, "obs")
        self.action[i] = action
        for key, value in extras.items():
            self.extras[key][i] = value
        self.reward[i] = float(t.reward) if labeled else 0.0
        self.labeled[i] = labeled
        self.terminated[i], self.truncated[i] = bool(t.terminated), bool(t.truncated)
        self.intervention[i] = bool(t.intervention)
        ep = int(t.episode_id)
        self.episode_id[i], self.step[i] = ep, int(t.step)
        prev = self._open.pop(ep, NONE)
        if prev != NONE and not t.is_first and self.step[prev] == t.step - 1:
            self.next_slot[prev], self.prev_slot[i] = i, prev
        if t.done:
            self._store_final(i, t.next_obs)
        else:
            self._open[ep] = i
        self.ptr = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)
        return i

    def _store_final(self, i: int, next_obs: Mapping[str, Any]) -> None:
        f = self.final_ptr
        owner = self.final_owner[f]
        if owner != NONE:  # the side store wrapped while that episode end is still stored
            self.final_idx[owner] = NONE
            if not self._warned_final:
                self._warned_final = True
                warnings.warn(f"replay final-observation store ({self.final_capacity}) is full: the oldest "
                              "episode's last transition is no longer sampled; raise final_capacity",
                              stacklevel=3)
        self._write_obs(self.final, f, next_obs, "next_obs")
        self.final_owner[f], self.final_idx[i] = i, f
        self.final_ptr = (f + 1) % self.final_capacity

    def add_batch(self, transitions: Sequence[Transition], labeled: bool = True) -> np.ndarray:
        return np.array([self.add(t, labeled=labeled) for t in transitions], np.int64)

    # ------------------------------------------------------------------ labels
    def set_rewards(self, slots: np.ndarray, rewards: np.ndarray, episode_id: int | np.ndarray | None = None) -> int:
        """Label (or relabel) the given slots with the given rewards; returns how many were written.

        With ``episode_id`` (one id, or one per slot), slots that were overwritten by
        another episode since they were handed out (a slow asynchronous label on a full
        replay) are skipped instead of mislabeled.
        """
        slots = np.asarray(slots, np.int64).reshape(-1)
        rewards = np.asarray(rewards, np.float32).reshape(-1)
        if slots.shape != rewards.shape:
            raise ValueError(f"set_rewards needs one reward per slot, got {slots.size} slots and {rewards.size} rewards")
        if slots.size and (slots.min() < 0 or slots.max() >= self.size):
            raise ValueError(f"slots must lie in [0, {self.size}), got range [{slots.min()}, {slots.max()}]")
        if not np.all(np.isfinite(rewards)):
            raise ValueError("rewards must be finite numbers (a failed label is not a reward)")
        if episode_id is not None:
            keep = self.episode_id[slots] == np.asarray(episode_id, np.int64)
            slots, rewards = slots[keep], rewards[keep]
        self.reward[slots] = rewards
        self.labeled[slots] = True
        return int(slots.size)

    def relabel(self, fn: Callable[[dict], np.ndarray], batch_size: int = 1024) -> None:
        """Recompute the reward of every stored transition whose next observation is known.

        ``fn`` gets a numpy batch (``obs``, ``action``, ``next_obs``, ``slot``,
        ``episode_id``, ``step``, ``terminated``, ``truncated``) and returns one reward
        per row. The newest step of a running episode keeps its old label.
        """
        slots = np.flatnonzero(self.has_next(np.arange(self.size)))
        for start in range(0, slots.size, batch_size):
            chunk = slots[start:start + batch_size]
            batch = {"obs": self.obs_at(chunk), "action": self.action[chunk], "next_obs": self.next_obs_at(chunk),
                     "slot": chunk, "episode_id": self.episode_id[chunk], "step": self.step[chunk],
                     "terminated": self.terminated[chunk], "truncated": self.truncated[chunk]}
            self.set_rewards(chunk, np.asarray(fn(batch), np.float32))

    # ------------------------------------------------------------------ reading
    def has_next(self, slots: np.ndarray) -> np.ndarray:
        """Whether each slot's next observation is stored (next step or final observation)."""
        return (self.next_slot[slots] != NONE) | (self.final_idx[slots] != NONE)

    def _structure(self, flat: dict) -> dict:
        """Flat storage columns -> {"state", "pixels": {cam}, "instruction": [str]}."""
        out: dict[str, Any] = {}
        if self.has_state:
            out["state"] = flat["state"]
        if self.cameras:
            out["pixels"] = {c: flat[f"pixels.{c}"] for c in self.cameras}
        if self.has_instruction:
            out["instruction"] = [self.vocab[j] for j in flat["instruction"]]
        return out

    def obs_at(self, slots: np.ndarray) -> dict:
        """The observations of ``slots`` as an observation batch."""
        return self._structure({k: v[slots] for k, v in self.obs.items()})

    def next_obs_at(self, slots: np.ndarray) -> dict:
        """The observation after each slot's transition (from the next slot or the final store)."""
        from_final = self.final_idx[slots] != NONE
        rows = np.flatnonzero(from_final)
        src = np.where(from_final, 0, self.next_slot[slots])
        flat = {}
        for key, arr in self.obs.items():
            flat[key] = arr[src]
            flat[key][rows] = self.final[key][self.final_idx[slots[rows]]]
        return self._structure(flat)

    def extras_at(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[slots] for k, v in self.extras.items()}

    def next_extras_at(self, slots: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The extras stored with the observation after each slot's transition, and a mask
        of the rows that have them: False where that observation is an episode's final one
        (the side store keeps no extras; e.g. no base action was computed there)."""
        stored = self.final_idx[slots] == NONE
        src = np.where(stored, self.next_slot[slots], 0)
        return {k: v[src] for k, v in self.extras.items()}, stored & (self.next_slot[slots] != NONE)

    def set_extras(self, key: str, slots: np.ndarray, values: np.ndarray) -> None:
        """Write extras column ``key`` at ``slots`` (a relabelled ``base_action`` of demos),
        adding the column (zeros elsewhere) when this replay has none of that name yet."""
        values = np.asarray(values)
        slots = np.asarray(slots, np.int64).reshape(-1)
        if values.shape[0] != slots.size:
            raise ValueError(f"set_extras({key!r}) needs one row per slot, got {slots.size} slots and {values.shape[0]} rows")
        if key not in self.extras:
            self.extras_spec = {**(self.extras_spec or {}), key: (values.shape[1:], values.dtype)}
            if self._extras_arg is not None:
                self._extras_arg = dict(self.extras_spec)
            self.extras[key] = np.zeros((self.capacity, *values.shape[1:]), values.dtype)
        self.extras[key][slots] = values

    def episode_slots(self, episode_id: int) -> np.ndarray:
        """Slots of one episode in step order (those still stored)."""
        slots = np.flatnonzero(self.episode_id[: self.size] == episode_id)
        return slots[np.argsort(self.step[slots], kind="stable")]

    def frames(self, slots: np.ndarray, camera: str, next: bool = True) -> np.ndarray:
        """(N, H, W, 3) uint8 frames of ``camera``: the next observation of each slot (or its obs)."""
        if camera not in self.cameras:
            raise ValueError(f"unknown camera {camera!r}; this replay stores {self.cameras}")
        slots = np.asarray(slots, np.int64).reshape(-1)
        if not next:
            return self.obs[f"pixels.{camera}"][slots]
        if not self.has_next(slots).all():
            raise ValueError("some slots have no next observation yet (newest step of a running episode)")
        return self.next_obs_at(slots)["pixels"][camera]

    def sample(self, batch_size: int) -> dict:
        """A numpy batch of n-step transitions (:class:`embodied.replay.NStepSampler`)."""
        return self.sampler.sample(batch_size)

    def sample_torch(self, batch_size: int, device="cpu") -> Batch:
        return to_torch(self.sample(batch_size), device)

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        """Plain numpy arrays, no pickle (:mod:`embodied.replay.state`)."""
        return replay_state.state_dict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        replay_state.load_state_dict(self, state)
