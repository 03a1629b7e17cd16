"""Sequence windows for world models (RSSM training): ``B`` windows of ``L`` steps of one episode.

A window starts at a slot drawn uniformly among the labeled slots whose next observation
is known, then follows the episode's links (``next_slot``, so interleaved vector envs and
wrap-around are fine) for up to ``L`` transitions. It never crosses into another episode.

Padding policy
    A window stops early at a termination or truncation, at the newest stored step of a
    running episode, or before a step that is unlabeled or was overwritten. The steps
    after that are padding: ``mask`` is False there, ``action`` and ``reward`` are zero,
    the flags are False, ``extras`` and ``slot`` repeat the last real step, and the
    observations repeat the last real one (the final observation after an episode end).

Layout (row ``t`` is the transition ``obs[:, t] --action[:, t]--> obs[:, t + 1]``)
    ``obs``: ``state`` (B, L + 1, D), ``pixels`` ``{cam: (B, L + 1, H, W, 3)}`` uint8,
    ``instruction`` one str per window; ``action`` (B, L, A); ``reward``, ``is_first``,
    ``terminated``, ``truncated``, ``mask`` (B, L); ``extras`` ``{key: (B, L, ...)}``;
    ``slot`` (B, L). ``is_first`` marks step 0 of an episode (stored ``step == 0``).
"""

from __future__ import annotations

import numpy as np

from embodied.replay.nstep import NONE, draw_uniform, tree_to_torch


class SequenceSampler:
    """Windows of ``length`` consecutive steps of one episode from a :class:`~embodied.replay.Replay`."""

    def __init__(self, replay, length: int, rng: np.random.Generator | None = None):
        if length < 1:
            raise ValueError(f"sequence length must be >= 1, got {length}")
        self.replay, self.length, self._rng = replay, int(length), rng

    def _usable(self, slots: np.ndarray) -> np.ndarray:
        r = self.replay
        return r.labeled[slots] & r.has_next(slots)

    def window_slots(self, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B,) start slots -> (B, L) slots (padding repeats the last real one) and (B, L) mask."""
        r = self.replay
        slots = np.empty((starts.size, self.length), np.int64)
        mask = np.zeros((starts.size, self.length), bool)
        cur, alive = starts.copy(), self._usable(starts)
        for t in range(self.length):
            slots[:, t], mask[:, t] = cur, alive
            nxt = r.next_slot[cur]
            alive = alive & ~(r.terminated[cur] | r.truncated[cur]) & (nxt != NONE)
            alive[alive] &= self._usable(nxt[alive])
            cur = np.where(alive, nxt, cur)
        return slots, mask

    def sample(self, batch_size: int) -> dict:
        """A numpy batch of ``batch_size`` windows (layout in the module docstring)."""
        r = self.replay
        return self.windows_at(draw_uniform(self._rng or r._rng, r.size, self._usable, batch_size))

    def windows_at(self, starts: np.ndarray) -> dict:
        """The batch of windows that start at the given slots."""
        r = self.replay
        starts = np.asarray(starts, np.int64).reshape(-1)
        slots, mask = self.window_slots(starts)
        B, L = slots.shape
        flat = slots.reshape(-1)
        first, after = r.obs_at(starts), r.next_obs_at(flat)
        obs = {}
        if "state" in first:
            obs["state"] = np.concatenate([first["state"][:, None], after["state"].reshape(B, L, -1)], 1)
        if "pixels" in first:
            obs["pixels"] = {c: np.concatenate([f[:, None], after["pixels"][c].reshape(B, L, *f.shape[1:])], 1)
                             for c, f in first["pixels"].items()}
        if "instruction" in first:
            obs["instruction"] = first["instruction"]
        action = r.action[slots] * mask[..., None]
        return {"obs": obs, "action": action, "reward": np.where(mask, r.reward[slots], 0.0).astype(np.float32),
                "is_first": mask & (r.step[slots] == 0), "terminated": mask & r.terminated[slots],
                "truncated": mask & r.truncated[slots], "mask": mask,
                "extras": {k: v.reshape(B, L, *v.shape[1:]) for k, v in r.extras_at(flat).items()},
                "slot": slots}

    def sample_torch(self, batch_size: int, device="cpu") -> dict:
        """:meth:`sample` as tensors on ``device`` (the instruction list stays a list)."""
        return tree_to_torch(self.sample(batch_size), device)
