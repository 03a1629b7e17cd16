"""Steps a vector of environments with a policy and hands out transitions.

The main loop composes behaviour by registering callbacks (``driver.on_transition(
replay.add)``), as in danijar/embodied. The vector env must use gymnasium's
``SAME_STEP`` autoreset (``envs.make_vec_env`` does): the final observation of an
episode comes in ``info["final_obs"]`` and no fake reset-step transition is produced.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from embodied.contracts import PolicyStep, Transition

TransitionFn = Callable[[Transition, int], None]  # (transition, env index)
EpisodeFn = Callable[[dict[str, Any], int], None]  # (episode summary, env index)


def unbatch(obs: dict[str, Any], i: int) -> dict[str, Any]:
    """Observation ``i`` of a batched observation dict."""
    out: dict[str, Any] = {}
    for key, value in obs.items():
        if isinstance(value, dict):
            out[key] = unbatch(value, i)
        elif key == "instruction":
            out[key] = value[i]
        else:
            out[key] = np.asarray(value[i])
    return out


def _info_columns(info: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """The per-env entries of a vector env's ``info``: ``(key, values, mask or None)``, read
    once per step (1-D numeric columns as Python lists: a scalar per env without numpy)."""
    cols = []
    for key, value in info.items():
        if key.startswith("_") or key in ("final_obs", "final_info") or isinstance(value, dict):
            continue
        if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype != object:
            value = value.tolist()
        cols.append((key, value, info.get(f"_{key}")))
    return cols


def _info_at(cols: list[tuple[str, Any, Any]], i: int) -> dict[str, Any]:
    """Env ``i``'s info from :func:`_info_columns` (entries its mask leaves out are skipped)."""
    out = {}
    for key, value, mask in cols:
        if mask is None or mask[i]:
            v = value[i]
            out[key] = v.item() if isinstance(v, np.generic) else v
    return out


class Driver:
    """Runs ``policy_fn(obs_batch)`` in a SAME_STEP-autoreset vector env.

    ``policy_fn`` returns ``(B, A)`` actions or a :class:`~embodied.contracts.PolicyStep`
    (whose log-prob, value and extras become each transition's ``extras``); when it has a
    ``reset(env_ids)`` (a :class:`policies.chunking.ChunkExecutor`) it is called for every
    env whose episode ended, truncations included. Chunked policies run through the executor.
    """

    def __init__(self, venv, episode_offset: int = 0):
        self.venv = venv
        self.num_envs = venv.num_envs
        self._transition_fns: list[TransitionFn] = []
        self._episode_fns: list[EpisodeFn] = []
        self._next_episode = episode_offset
        self.obs: dict[str, Any] | None = None

    def on_transition(self, fn: TransitionFn) -> "Driver":
        self._transition_fns.append(fn)
        return self

    def on_episode(self, fn: EpisodeFn) -> "Driver":
        self._episode_fns.append(fn)
        return self

    @property
    def episodes_started(self) -> int:
        return self._next_episode

    def reset(self, seed: int | None = None) -> None:
        self.obs, _ = self.venv.reset(seed=seed)
        n = self.num_envs
        self._episode = np.arange(self._next_episode, self._next_episode + n)
        self._next_episode += n
        self._step = np.zeros(n, np.int64)
        self._return = np.zeros(n, np.float64)
        self._success = np.zeros(n, bool)

    def step(self, policy_fn: Callable[[dict[str, Any]], np.ndarray],
             intervene_fn: Callable[[dict[str, Any], np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None) -> int:
        """One step of every env; returns the number of transitions produced."""
        if self.obs is None:
            self.reset()
        out = policy_fn(self.obs)
        step = out if isinstance(out, PolicyStep) else PolicyStep(np.asarray(out, np.float32))
        actions = np.asarray(step.action, np.float32)
        if actions.ndim != 2:
            raise ValueError(f"the Driver steps (num_envs, action_dim) actions, got {actions.shape}: "
                             "run a chunked policy through policies.chunking.ChunkExecutor")
        intervention = np.zeros(self.num_envs, bool)
        if intervene_fn is not None:
            actions, intervention = intervene_fn(self.obs, actions)
        actions = np.clip(actions, -1.0, 1.0)
        next_obs, reward, terminated, truncated, info = self.venv.step(actions)
        final_obs = info.get("final_obs")
        step_cols = _info_columns(info)
        final_cols = _info_columns(info["final_info"]) if "final_info" in info else []
        ended = []
        for i in range(self.num_envs):
            done = bool(terminated[i] or truncated[i])
            nxt = final_obs[i] if done else unbatch(next_obs, i)
            step_info = _info_at(final_cols if done else step_cols, i)
            t = Transition(
                obs=unbatch(self.obs, i), action=actions[i], reward=float(reward[i]), next_obs=nxt,
                terminated=bool(terminated[i]), truncated=bool(truncated[i]),
                is_first=bool(self._step[i] == 0), episode_id=int(self._episode[i]),
                step=int(self._step[i]), intervention=bool(intervention[i]), info=step_info,
                extras=step.per_env(i),
            )
            self._return[i] += t.reward
            self._success[i] |= bool(step_info.get("success", False))
            for fn in self._transition_fns:
                fn(t, i)
            self._step[i] += 1
            if done:
                summary = {"episode_id": int(self._episode[i]), "length": int(self._step[i]),
                           "return": float(self._return[i]), "success": bool(self._success[i]),
                           "progress": float(step_info.get("progress", np.nan))}
                if "task_id" in step_info:  # a multi-task env: which task the episode was
                    summary["task_id"] = int(step_info["task_id"])
                for fn in self._episode_fns:
                    fn(summary, i)
                ended.append(i)
                self._episode[i] = self._next_episode
                self._next_episode += 1
                self._step[i] = 0
                self._return[i] = 0.0
                self._success[i] = False
        if ended and hasattr(policy_fn, "reset"):
            policy_fn.reset(ended)  # no queued action or state crosses an episode boundary
        self.obs = next_obs
        return self.num_envs
