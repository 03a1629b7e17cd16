"""The n-step transition sampler (what SAC, IQL and TD3 train on) and RLPD mixing.

n-step targets
    A row drawn at slot ``i`` sums ``k <= n_step`` rewards along its episode: the sum
    stops at a termination (``discount = 0``), at a time-limit truncation (``discount =
    gamma**k``, bootstrapping from the final observation), or at the newest stored step
    of a running episode. A slot may be sampled only when every reward in its window is
    labeled (``add(..., labeled=False)`` then ``set_rewards`` or ``relabel``).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from embodied.contracts import Batch

NONE = -1


def draw_uniform(rng: np.random.Generator, size: int, ok: Callable[[np.ndarray], np.ndarray],
                 batch_size: int) -> np.ndarray:
    """``batch_size`` slots drawn uniformly (with replacement) among the slots of
    ``[0, size)`` where ``ok(slots)`` holds: rejection sampling, then an exact fallback."""
    if size == 0:
        raise ValueError("cannot sample from an empty replay")
    chosen: list[np.ndarray] = []
    need = batch_size
    for _ in range(4):
        cand = rng.integers(0, size, size=2 * need + 8)
        cand = cand[ok(cand)][:need]
        chosen.append(cand)
        need -= cand.size
        if need == 0:
            return np.concatenate(chosen)
    pool = np.arange(size)
    pool = pool[ok(pool)]
    if pool.size == 0:
        raise ValueError("no sampleable transitions: none is labeled with a known next observation")
    chosen.append(rng.choice(pool, size=need))
    return np.concatenate(chosen)


class NStepSampler:
    """Uniform n-step transitions from a :class:`~embodied.replay.Replay`.

    ``n_step``, ``gamma`` and ``rng`` default to the replay's own (read on every call, so a
    loaded checkpoint's gamma and random state apply); :meth:`Replay.sample` is this
    sampler with those defaults. A batch holds ``obs``, ``action``, ``reward`` (the
    discounted sum), ``discount`` (``gamma**k``, 0 after a termination), ``next_obs``,
    ``is_offline``, ``intervention``, ``extras`` (of the first step; with each key's value at
    ``next_obs`` as ``next_<key>`` and ``next_extras_known``, False where ``next_obs`` is an
    episode's final observation, which has no extras) and ``slot``.
    """

    def __init__(self, replay, n_step: int | None = None, gamma: float | None = None,
                 rng: np.random.Generator | None = None):
        if n_step is not None and n_step < 1:
            raise ValueError(f"n_step must be >= 1, got {n_step}")
        self.replay, self._n_step, self._gamma, self._rng = replay, n_step, gamma, rng

    def windows(self, slots: np.ndarray):
        """n-step window of each slot -> (ok, reward sum, discount, slot whose next obs ends it)."""
        r = self.replay
        n_step = self._n_step or r.n_step
        gamma = r.gamma if self._gamma is None else self._gamma
        labeled, reward, terminated, truncated, next_slot = r.labeled, r.reward, r.terminated, r.truncated, r.next_slot
        ok = (slots < r.size) & r.has_next(slots)
        ret = np.zeros(slots.size, np.float32)
        disc = np.ones(slots.size, np.float32)
        last = slots.copy()
        cur, alive = slots.copy(), ok.copy()
        for _ in range(n_step):
            ok &= ~alive | labeled[cur]
            ret += np.where(alive, disc * reward[cur], 0.0).astype(np.float32)
            disc = np.where(alive, disc * gamma, disc).astype(np.float32)
            last = np.where(alive, cur, last)
            ended = terminated[cur] | truncated[cur]
            disc = np.where(alive & terminated[cur], 0.0, disc).astype(np.float32)
            nxt = next_slot[cur]
            alive &= ~ended & (nxt != NONE)
            cur = np.where(alive, nxt, cur)
            alive &= r.has_next(cur)  # the newest step of a running episode ends the window
        return ok, ret, disc, last

    def sample(self, batch_size: int) -> dict:
        """A numpy batch of ``batch_size`` rows drawn uniformly from the sampleable slots."""
        r = self.replay
        rng = self._rng or r._rng
        slots = draw_uniform(rng, r.size, lambda s: self.windows(s)[0], batch_size)
        _, ret, disc, last = self.windows(slots)
        extras = r.extras_at(slots)
        if extras:  # what the policy computed at next_obs (a residual's base action there)
            after, known = r.next_extras_at(last)
            extras.update({f"next_{k}": v for k, v in after.items()})
            extras["next_extras_known"] = known
        return {"obs": r.obs_at(slots), "action": r.action[slots], "reward": ret, "discount": disc,
                "next_obs": r.next_obs_at(last), "is_offline": r.intervention[slots] | r.offline,
                "intervention": r.intervention[slots].copy(), "extras": extras, "slot": slots}

    def sample_torch(self, batch_size: int, device="cpu") -> Batch:
        return to_torch(self.sample(batch_size), device)


class MixedReplay:
    """RLPD-style sampling: ``offline_ratio`` of each batch from ``offline``, the rest from
    ``online``; when one side has nothing labeled, every row comes from the other. A mixed
    batch carries the extras keys that both sides store."""

    def __init__(self, online, offline, offline_ratio: float = 0.5):
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
        if len(parts) == 1:
            return parts[0]
        common = set(parts[0]["extras"]) & set(parts[1]["extras"])
        for p in parts:
            p["extras"] = {k: v for k, v in p["extras"].items() if k in common}
        return concat(parts)

    def sample_torch(self, batch_size: int, device="cpu") -> Batch:
        return to_torch(self.sample(batch_size), device)

    def state_dict(self) -> dict:
        return {"online": self.online.state_dict(), "offline": self.offline.state_dict(),
                "offline_ratio": np.array(self.offline_ratio)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.online.load_state_dict(state["online"])
        self.offline.load_state_dict(state["offline"])
        self.offline_ratio = float(state["offline_ratio"])


def concat(parts: list) -> Any:
    """Join batches row-wise (nested dicts of arrays, lists of instructions)."""
    first = parts[0]
    if isinstance(first, dict):
        return {k: concat([p[k] for p in parts]) for k in first}
    if isinstance(first, list):
        return [x for p in parts for x in p]
    return np.concatenate(parts)


def tree_to_torch(x: Any, device="cpu") -> Any:
    """Nested dicts of numpy arrays -> the same of tensors on ``device`` (lists stay lists)."""
    import torch

    if isinstance(x, dict):
        return {k: tree_to_torch(v, device) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return torch.as_tensor(x, device=device)
    return x  # instruction strings stay a list


def to_torch(batch: dict, device="cpu") -> Batch:
    """numpy batch -> :class:`embodied.Batch` of tensors on ``device`` (pixels stay uint8)."""
    t = tree_to_torch({k: v for k, v in batch.items() if k != "slot"}, device)
    return Batch(obs=t["obs"], action=t["action"], reward=t["reward"], discount=t["discount"],
                 next_obs=t["next_obs"], is_offline=t.get("is_offline"), intervention=t.get("intervention"),
                 extras=t.get("extras", {}))
