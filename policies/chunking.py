"""One action-chunk executor for every loop: the Driver, evaluation and the robot actor.

A chunked policy (``chunk_size = K > 1``) returns ``(B, K, A)`` chunks; the executor keeps
one queue per env and plays each chunk open loop: an env whose queue is empty gets a new
chunk (the policy is asked for those envs only), every env then takes the next action of
its own queue. ``reset(env_ids)`` clears those envs' queues and the policy's per-env state
(``policy.reset`` and, for a per-env state object the policy returned, ``state.reset``);
the loops call it at every episode boundary, truncations included, so no queued action of
one episode is ever played in the next. ``execute`` (default K) plays only the first
``execute`` actions of each chunk before asking again (receding horizon).

Single-action policies pass straight through (``(B, A)``: nothing is queued). Whatever the
policy step carries besides actions (log-prob, value, extras) is reported for the step in
which its chunk was drawn (zeros on the other steps of the chunk), and the position in
the chunk as ``extras["chunk_index"]`` (0: a fresh chunk).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Sequence

import numpy as np

from embodied.contracts import PolicyStep


def policy_step(policy: Any, obs: dict[str, Any], state: Any = None, deterministic: bool = False) -> PolicyStep:
    """``policy.step`` when it has one, else its ``act`` wrapped as a step."""
    if hasattr(policy, "step"):
        return policy.step(obs, state, deterministic=deterministic)
    return PolicyStep(np.asarray(policy.act(obs, deterministic=deterministic), np.float32))


def select(obs: dict[str, Any], rows: np.ndarray) -> dict[str, Any]:
    """Rows ``rows`` of a batched observation dict (``instruction`` is a list of str)."""
    out: dict[str, Any] = {}
    for key, value in obs.items():
        if isinstance(value, dict):
            out[key] = select(value, rows)
        elif key == "instruction":
            out[key] = [value[i] for i in rows]
        else:
            out[key] = np.asarray(value)[rows]
    return out


class ChunkExecutor:
    """Plays a policy's action chunks with one queue per env (see the module docstring)."""

    def __init__(self, policy: Any, num_envs: int, execute: int | None = None, deterministic: bool = False):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.policy, self.num_envs = policy, int(num_envs)
        self.deterministic = bool(deterministic)  # used when a call does not say (the Driver's calls)
        self.chunk_size = int(getattr(policy, "chunk_size", 1))
        # the policy's own setting when it has one (a LeRobot checkpoint's n_action_steps)
        self.execute = int(execute or getattr(policy, "n_action_steps", None) or self.chunk_size)
        if not 1 <= self.execute <= self.chunk_size:
            raise ValueError(f"execute must be in [1, chunk_size={self.chunk_size}], got {self.execute}")
        self.queues: list[deque] = [deque() for _ in range(self.num_envs)]
        self.state: Any = None
        self._layout: dict[str, tuple[tuple[int, ...], np.dtype]] = {}  # what a drawn step carries

    def reset(self, env_ids: Sequence[int] | None = None) -> None:
        """Forget the queued actions (and the policy's state) of ``env_ids`` (all when None)."""
        ids = list(range(self.num_envs) if env_ids is None else env_ids)
        for i in ids:
            self.queues[i].clear()
        if hasattr(self.policy, "reset"):
            self.policy.reset(list(ids))
        if hasattr(self.state, "reset"):  # per-env state the policy returned (a residual's base queues)
            self.state.reset(list(ids))

    def __call__(self, obs: dict[str, Any], deterministic: bool | None = None) -> PolicyStep:
        deterministic = self.deterministic if deterministic is None else bool(deterministic)
        if self.chunk_size == 1:
            step = policy_step(self.policy, obs, self.state, deterministic)
            self.state = step.state
            return step
        empty = np.array([i for i, q in enumerate(self.queues) if not q], np.int64)
        drawn = None
        if empty.size:
            drawn = policy_step(self.policy, select(obs, empty), None, deterministic)
            chunks = np.asarray(drawn.action, np.float32)
            if chunks.shape[:2] != (empty.size, self.chunk_size):
                raise ValueError(f"a chunked policy must return (B, {self.chunk_size}, A) chunks, got {chunks.shape}")
            for row, env in enumerate(empty):
                self.queues[env].extend(chunks[row, : self.execute])
        index = np.array([self.execute - len(q) for q in self.queues], np.int64)
        action = np.stack([q.popleft() for q in self.queues])
        return PolicyStep(action, extras={"chunk_index": index, **self._spread(drawn, empty)})

    def _spread(self, step: PolicyStep | None, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Per-env extras of a step drawn for ``rows`` only; the other envs get zeros, so
        every step carries the same keys (a chunk's extras belong to its first action)."""
        if step is not None:
            parts = {k: np.asarray(v) for k, v in step.extras.items()}
            parts.update({k: np.asarray(getattr(step, k), np.float32) for k in ("log_prob", "value")
                          if getattr(step, k) is not None})
            self._layout = {k: (v.shape[1:], v.dtype) for k, v in parts.items()}
        out = {}
        for key, (shape, dtype) in self._layout.items():
            out[key] = np.zeros((self.num_envs, *shape), dtype)
            if step is not None:
                out[key][rows] = parts[key]
        return out

    def act(self, obs: dict[str, Any], deterministic: bool | None = None) -> np.ndarray:
        """Just the (B, A) actions of :meth:`__call__`."""
        return self(obs, deterministic).action
