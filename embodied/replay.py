"""Replay: circular numpy storage where every observation is stored once.

Layout
    Slot ``i`` holds one transition: its observation (``state`` float32, one uint8 array
    per camera, an instruction id into a small vocabulary), action, reward, flags and
    episode bookkeeping. ``next_obs`` is *not* stored: it is the observation of the slot
    that holds the next step of the same episode (``_next[i]``), or, for the transition
    that ends an episode (terminated or truncated), an entry in a small side store of
    final observations. Pixels therefore cost about one uint8 frame per camera per
    transition.

Episodes
    Transitions are linked by ``episode_id`` and ``step``, not by slot adjacency, so
    several environments may add interleaved transitions (vectorised envs). Episode ids
    must be unique within one replay. The env loop uses gymnasium's SAME_STEP autoreset,
    so no fake "reset" transition ever arrives; a new episode is recognised by its
    ``episode_id`` (and ``is_first``). The last transition of an episode that never
    reports ``terminated``/``truncated`` has no next observation and is never sampled.
    Overwriting a slot unlinks it from its neighbours, so an observation is never paired
    with the next observation of another episode.

n-step targets
    A sample at slot ``i`` sums ``k <= n_step`` rewards along its episode: the sum stops
    at a termination (``discount = 0``), at a time-limit truncation (``discount =
    gamma**k``, bootstrapping from the final observation), or at the newest stored step
    of a running episode. A slot may be sampled only when every reward in its window is
    labeled (``add(..., labeled=False)`` then ``set_rewards`` or ``relabel``).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from embodied.contracts import Batch, Transition

_NONE = -1


class Replay:
    """Circular replay with n-step returns and pixel observations stored once as uint8.

    ``final_capacity`` is the size of the side store of final observations (one per
    episode end held in the buffer). It defaults to ``capacity // 16 + 64`` (episodes
    averaging 16 steps or more never lose one); when it wraps while the episode's last
    transition is still stored, that transition stops being sampleable and a warning
    says to raise it. ``offline=True`` marks every row sampled from this replay with
    ``is_offline`` (demos, datasets); rows flagged ``intervention`` are marked too.
    """

    def __init__(self, capacity: int, obs_space, action_space, *, n_step: int = 1,
                 gamma: float = 0.99, seed: int = 0, final_capacity: int | None = None,
                 offline: bool = False):
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
        self._rng = np.random.default_rng(seed)
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
        self.episode_id = np.full(n, _NONE, np.int64)
        self.step = np.zeros(n, np.int64)
        self.next_slot = np.full(n, _NONE, np.int64)  # slot of the next step of this episode
        self.prev_slot = np.full(n, _NONE, np.int64)
        self.final_idx = np.full(n, _NONE, np.int64)  # index into the final-obs side store
        self.final_owner = np.full(self.final_capacity, _NONE, np.int64)
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

    def _release(self, i: int) -> None:
        """Unlink slot ``i`` before it is overwritten."""
        prev, nxt = self.prev_slot[i], self.next_slot[i]
        if prev != _NONE and self.next_slot[prev] == i:
            self.next_slot[prev] = _NONE
        if nxt != _NONE and self.prev_slot[nxt] == i:
            self.prev_slot[nxt] = _NONE
        if self.final_idx[i] != _NONE:
            self.final_owner[self.final_idx[i]] = _NONE
        if self._open.get(int(self.episode_id[i])) == i:
            del self._open[int(self.episode_id[i])]
        self.next_slot[i] = self.prev_slot[i] = self.final_idx[i] = _NONE

    def add(self, t: Transition, *, labeled: bool = True) -> int:
        """Store one transition; returns its slot."""
        action = np.asarray(t.action, np.float32).reshape(-1)
        if action.shape != (self.action_dim,):
            raise ValueError(f"action must have {self.action_dim} values, got shape {np.shape(t.action)}")
        i = self.ptr
        self._release(i)
        self._write_obs(self.obs, i, t.obs, "obs")
        self.action[i] = action
        self.reward[i] = float(t.reward) if labeled else 0.0
        self.labeled[i] = labeled
        self.terminated[i], self.truncated[i] = bool(t.terminated), bool(t.truncated)
        self.intervention[i] = bool(t.intervention)
        ep = int(t.episode_id)
        self.episode_id[i], self.step[i] = ep, int(t.step)
        prev = self._open.pop(ep, _NONE)
        if prev != _NONE and not t.is_first and self.step[prev] == t.step - 1:
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
        if owner != _NONE:  # the side store wrapped while that episode end is still stored
            self.final_idx[owner] = _NONE
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
        slots = np.flatnonzero(self._has_next(np.arange(self.size)))
        for start in range(0, slots.size, batch_size):
            chunk = slots[start:start + batch_size]
            batch = {"obs": self._gather(self.obs, chunk), "action": self.action[chunk],
                     "next_obs": self._next_obs(chunk), "slot": chunk, "episode_id": self.episode_id[chunk],
                     "step": self.step[chunk], "terminated": self.terminated[chunk],
                     "truncated": self.truncated[chunk]}
            self.set_rewards(chunk, np.asarray(fn(batch), np.float32))

    # ------------------------------------------------------------------ reading
    def _has_next(self, slots: np.ndarray) -> np.ndarray:
        return (self.next_slot[slots] != _NONE) | (self.final_idx[slots] != _NONE)

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

    def _gather(self, arrays: dict, idx: np.ndarray) -> dict:
        return self._structure({k: v[idx] for k, v in arrays.items()})

    def _next_obs(self, slots: np.ndarray) -> dict:
        """The observation after each slot's transition (from the next slot or the final store)."""
        from_final = self.final_idx[slots] != _NONE
        rows = np.flatnonzero(from_final)
        src = np.where(from_final, 0, self.next_slot[slots])
        flat = {}
        for key, arr in self.obs.items():
            flat[key] = arr[src]
            flat[key][rows] = self.final[key][self.final_idx[slots[rows]]]
        return self._structure(flat)

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
        if not self._has_next(slots).all():
            raise ValueError("some slots have no next observation yet (newest step of a running episode)")
        return self._next_obs(slots)["pixels"][camera]

    def _windows(self, slots: np.ndarray):
        """n-step window of each slot -> (ok, reward sum, discount, slot whose next obs ends it)."""
        ok = (slots < self.size) & self._has_next(slots)
        ret = np.zeros(slots.size, np.float32)
        disc = np.ones(slots.size, np.float32)
        last = slots.copy()
        cur, alive = slots.copy(), ok.copy()
        for t in range(self.n_step):
            ok &= ~alive | self.labeled[cur]
            ret += np.where(alive, disc * self.reward[cur], 0.0).astype(np.float32)
            disc = np.where(alive, disc * self.gamma, disc).astype(np.float32)
            last = np.where(alive, cur, last)
            ended = self.terminated[cur] | self.truncated[cur]
            disc = np.where(alive & self.terminated[cur], 0.0, disc).astype(np.float32)
            nxt = self.next_slot[cur]
            alive &= ~ended & (nxt != _NONE)
            cur = np.where(alive, nxt, cur)
            alive &= self._has_next(cur)  # the newest step of a running episode ends the window
        return ok, ret, disc, last

    def _draw(self, batch_size: int) -> np.ndarray:
        """Uniform slots among the sampleable ones (rejection sampling, exact fallback)."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay")
        chosen: list[np.ndarray] = []
        need = batch_size
        for _ in range(4):
            cand = self._rng.integers(0, self.size, size=2 * need + 8)
            cand = cand[self._windows(cand)[0]][:need]
            chosen.append(cand)
            need -= cand.size
            if need == 0:
                return np.concatenate(chosen)
        pool = np.arange(self.size)
        pool = pool[self._windows(pool)[0]]
        if pool.size == 0:
            raise ValueError("no sampleable transitions: none is labeled with a known next observation")
        chosen.append(self._rng.choice(pool, size=need))
        return np.concatenate(chosen)

    def sample(self, batch_size: int) -> dict:
        """A numpy batch of ``batch_size`` rows drawn uniformly from the sampleable slots."""
        slots = self._draw(batch_size)
        _, ret, disc, last = self._windows(slots)
        return {"obs": self._gather(self.obs, slots), "action": self.action[slots], "reward": ret,
                "discount": disc, "next_obs": self._next_obs(last),
                "is_offline": self.intervention[slots] | self.offline,
                "intervention": self.intervention[slots].copy(), "slot": slots}

    def sample_torch(self, batch_size: int, device="cpu") -> Batch:
        return to_torch(self.sample(batch_size), device)

    # ------------------------------------------------------------------ checkpoint
    _PER_SLOT = ("action", "reward", "labeled", "terminated", "truncated", "intervention", "episode_id",
                 "step", "next_slot", "prev_slot", "final_idx")

    def state_dict(self) -> dict:
        n, nf = self.size, self.final_capacity
        rng = self._rng.bit_generator.state
        words = [rng["state"]["state"], rng["state"]["inc"]]
        return {
            "meta": np.array([self.capacity, self.final_capacity, self.n_step, self.ptr, self.size,
                              self.final_ptr, rng["has_uint32"], rng["uinteger"]], np.int64),
            "gamma": np.array(self.gamma, np.float64),
            "rng": np.array([(w >> s) & 0xFFFFFFFFFFFFFFFF for w in words for s in (64, 0)], np.uint64),
            "vocab": np.array(self.vocab, dtype=np.str_) if self.vocab else np.zeros(0, "<U1"),
            "open": np.array(sorted(self._open.items()), np.int64).reshape(-1, 2),
            "slots": {k: getattr(self, k)[:n] for k in self._PER_SLOT},
            "obs": {k: v[:n] for k, v in self.obs.items()},
            "final": {k: v[:nf] for k, v in self.final.items()},
            "final_owner": self.final_owner,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        meta = [int(x) for x in np.asarray(state["meta"])]
        if meta[0] != self.capacity or meta[1] != self.final_capacity or meta[2] != self.n_step:
            raise ValueError(f"replay state has capacity/final_capacity/n_step {meta[:3]}, this replay "
                             f"{[self.capacity, self.final_capacity, self.n_step]}: build it with the same sizes")
        self._alloc()
        self.ptr, self.size, self.final_ptr = meta[3:6]
        self.gamma = float(state["gamma"])
        n = self.size
        for key in self._PER_SLOT:
            getattr(self, key)[:n] = state["slots"][key]
        for key, arr in self.obs.items():
            if key not in state["obs"]:
                raise ValueError(f"replay state lacks observation array {key!r}: observation spaces differ")
            arr[:n] = state["obs"][key]
        for key, arr in self.final.items():
            arr[:] = state["final"][key]
        self.final_owner[:] = state["final_owner"]
        self.vocab = [str(s) for s in state["vocab"]]
        self._vocab_ids = {s: i for i, s in enumerate(self.vocab)}
        self._open = {int(e): int(s) for e, s in np.asarray(state["open"])}
        w = [int(x) for x in np.asarray(state["rng"], np.uint64)]
        self._rng.bit_generator.state = {
            "bit_generator": "PCG64", "state": {"state": (w[0] << 64) | w[1], "inc": (w[2] << 64) | w[3]},
            "has_uint32": meta[6], "uinteger": meta[7]}


class MixedReplay:
    """RLPD-style sampling: ``offline_ratio`` of each batch from ``offline``, the rest from
    ``online``; when one side has nothing labeled, every row comes from the other."""

    def __init__(self, online: Replay, offline: Replay, offline_ratio: float = 0.5):
        if not 0.0 <= offline_ratio <= 1.0:
            raise ValueError(f"offline_ratio must be in [0, 1], got {offline_ratio}")
        self.online, self.offline, self.offline_ratio = online, offline, float(offline_ratio)

    def __len__(self) -> int:
        return len(self.online) + len(self.offline)

    def num_labeled(self) -> int:
        return self.online.num_labeled() + self.offline.num_labeled()

    def sample(self, batch_size: int) -> dict:
        n_off = int(round(batch_size * self.offline_ratio))
        if self.offline.num_labeled() == 0:
            n_off = 0
        elif self.online.num_labeled() == 0:
            n_off = batch_size
        parts = []
        if batch_size - n_off:
            parts.append(self.online.sample(batch_size - n_off))
        if n_off:
            part = self.offline.sample(n_off)
            part["is_offline"] = np.ones(n_off, bool)
            parts.append(part)
        return parts[0] if len(parts) == 1 else _concat(parts)

    def sample_torch(self, batch_size: int, device="cpu") -> Batch:
        return to_torch(self.sample(batch_size), device)

    def state_dict(self) -> dict:
        return {"online": self.online.state_dict(), "offline": self.offline.state_dict(),
                "offline_ratio": np.array(self.offline_ratio)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.online.load_state_dict(state["online"])
        self.offline.load_state_dict(state["offline"])
        self.offline_ratio = float(state["offline_ratio"])


def _concat(parts: list) -> Any:
    first = parts[0]
    if isinstance(first, dict):
        return {k: _concat([p[k] for p in parts]) for k in first}
    if isinstance(first, list):
        return [x for p in parts for x in p]
    return np.concatenate(parts)


def to_torch(batch: dict, device="cpu") -> Batch:
    """numpy batch -> :class:`embodied.Batch` of tensors on ``device`` (pixels stay uint8)."""
    import torch

    def conv(x):
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        if isinstance(x, np.ndarray):
            return torch.as_tensor(x, device=device)
        return x  # instruction strings stay a list

    return Batch(obs=conv(batch["obs"]), action=conv(batch["action"]), reward=conv(batch["reward"]),
                 discount=conv(batch["discount"]), next_obs=conv(batch["next_obs"]),
                 is_offline=conv(batch.get("is_offline")), intervention=conv(batch.get("intervention")))
