"""``make_env`` / ``make_vec_env`` and the registry of environment names.

A name is either exact (``"reach"``) or a family prefix ending in ``/`` whose factory
receives the rest of the name as its first argument (``"gym/"`` -> ``"gym/Hopper-v5"``,
``"robosuite/"`` -> ``"robosuite/Lift"``, ``"libero/"`` -> ``"libero/libero_spatial/0"``).
Factories import their simulator lazily, so ``import envs`` stays light.

A factory is called as ``factory([rest,] pixels=, cameras=, image_size=,
max_episode_steps=, **task_kwargs)`` and returns an env that follows the contracts
with its time limit applied (a time limit gives ``truncated=True``, never
``terminated``).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import gymnasium as gym

from envs.core import SeedFirstReset

Factory = Callable[..., gym.Env]
_REGISTRY: dict[str, Factory] = {}
_HINTS: dict[str, str] = {}


def register_env(name: str, factory: Factory, hint: str | None = None) -> None:
    """Register an exact name, or a family prefix ending in ``/`` (e.g. ``"gym/"``).

    ``hint`` is how the name is shown in :func:`list_envs` (e.g. ``"gym/<gymnasium id>"``).
    """
    if not name or name.startswith("/"):
        raise ValueError(f"env name {name!r} must be a non-empty name such as 'reach' or 'gym/'")
    _REGISTRY[name] = factory
    _HINTS[name] = hint or (name + "<id>" if name.endswith("/") else name)


def list_envs() -> list[str]:
    """Registered names; families are shown with a placeholder, e.g. ``gym/<gymnasium id>``."""
    return [_HINTS[n] for n in _REGISTRY]


def _resolve(name: str) -> tuple[Factory, tuple[str, ...]]:
    if name in _REGISTRY:
        return _REGISTRY[name], ()
    for prefix in sorted((n for n in _REGISTRY if n.endswith("/")), key=len, reverse=True):
        if name.startswith(prefix) and len(name) > len(prefix):
            return _REGISTRY[prefix], (name[len(prefix):],)
    raise ValueError(f"unknown env {name!r}; known envs: {', '.join(list_envs())}")


def make_env(
    name: str,
    *,
    seed: int | None = None,
    pixels: bool = False,
    cameras: Sequence[str] | str | None = None,
    image_size: int = 84,
    max_episode_steps: int | None = None,
    **task_kwargs: Any,
) -> gym.Env:
    """Build the env ``name`` following the project's observation/action conventions.

    seed: used by the first ``reset()`` that brings no seed (and seeds the action space).
    pixels: add ``obs["pixels"] = {camera: (image_size, image_size, 3) uint8}``.
    cameras: camera names (default: the env's main camera); unknown names raise.
    max_episode_steps: time limit (default: the task's own), ends with ``truncated=True``.
    task_kwargs: passed to the task (e.g. ``distractors=2`` for ``reach``; ``background=a`` and
    ``moving_distractors=3`` for moving visual distractors of the built-in tasks), except
    ``distractor_dims`` / ``distractor_seed`` (any env with a state: chaotic dimensions appended
    to it, envs/distractors.py).
    """
    if not isinstance(name, str):
        raise ValueError(f"env name must be a string such as 'reach', got {name!r}")
    if max_episode_steps is not None and int(max_episode_steps) < 1:
        raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
    if cameras is not None and not pixels:
        raise ValueError(f"{name}: cameras={cameras!r} given but pixels=False; set pixels=True")
    dims = int(task_kwargs.pop("distractor_dims", 0) or 0)
    dims_seed = int(task_kwargs.pop("distractor_seed", 0) or 0)
    factory, args = _resolve(name)
    if args and task_kwargs.get("task", None) is None:
        task_kwargs.pop("task", None)  # the name chose the task (lang_reach/blue); a config's `task: null` is not a second one
    env = factory(*args, pixels=bool(pixels), cameras=cameras, image_size=int(image_size),
                  max_episode_steps=max_episode_steps, **task_kwargs)
    if dims:  # chaotic task-uncorrelated state dimensions, any family (envs/distractors.py)
        from envs.distractors import DistractorDims

        env = DistractorDims(env, dims, seed=dims_seed)
    return SeedFirstReset(env, seed)


def kwargs_from_config(section: Mapping[str, Any], pixels: bool | None = None) -> dict[str, Any]:
    """An ``env:`` config section (plain mapping) -> ``make_env`` keyword arguments.

    ``name`` is dropped; ``pixels`` overrides the section's (a reward model needs frames).
    A config's camera list applies only with pixels on, so ``env=libero_object
    env.pixels=false`` needs no ``env.cameras=null``.
    """
    kw = {k: v for k, v in section.items() if k != "name"}
    if pixels is not None:
        kw["pixels"] = bool(pixels)
    if not kw.get("pixels"):
        kw.pop("cameras", None)
    return kw


def make_vec_env(
    name: str, num_envs: int, seed: int | None = None, *, asynchronous: bool = False,
    per_env_kwargs: Sequence[dict[str, Any]] | None = None, **kwargs: Any
) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``make_env(name, **kwargs)`` in a gymnasium vector env.

    Env ``i`` gets seed ``seed + i`` and, with ``per_env_kwargs``, its own settings on top
    of the shared ones: ``make_env(name, **{**kwargs, **per_env_kwargs[i]})`` (e.g. LIBERO's
    ``init_state_id=i, init_state_stride=num_envs`` for a fixed-initial-state evaluation).
    Autoreset is SAME_STEP: when an episode ends, the returned observation is already the
    next episode's first one and the final observation is in ``info["final_obs"]``
    (``info["final_info"]`` for its info), so no fake transition across the episode
    boundary exists. ``obs["instruction"]`` is a
    tuple of ``num_envs`` strings. ``asynchronous=True``: one spawned process per env.
    """
    if int(num_envs) < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    _resolve(name)  # fail early, in this process, on an unknown name
    if per_env_kwargs is not None and len(per_env_kwargs) != int(num_envs):
        raise ValueError(f"per_env_kwargs must hold one dict per env ({num_envs}), got {len(per_env_kwargs)}")

    def thunk(i: int) -> Callable[[], gym.Env]:
        kw = {**kwargs, **(per_env_kwargs[i] if per_env_kwargs is not None else {})}
        return lambda: make_env(name, seed=None if seed is None else seed + i, **kw)

    fns = [thunk(i) for i in range(int(num_envs))]
    mode = gym.vector.AutoresetMode.SAME_STEP
    if asynchronous:
        # spawn, not fork: a process that already holds threads (torch) or an OpenGL context
        # (a LIBERO / robosuite renderer) can deadlock its forked children
        return gym.vector.AsyncVectorEnv(fns, autoreset_mode=mode, shared_memory=False, context="spawn")
    return gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)


def _reach(**kw: Any) -> gym.Env:
    from envs.builtin.tasks import ReachEnv

    return _time_limit(ReachEnv, 50, **kw)


def _lang_reach(task: str | None = None, **kw: Any) -> gym.Env:
    from envs.builtin.tasks import LangReachEnv

    return _time_limit(LangReachEnv, 50, task=task, **kw)


def _push(**kw: Any) -> gym.Env:
    from envs.builtin.tasks import PushEnv

    return _time_limit(PushEnv, 100, **kw)


def _time_limit(cls: Callable[..., gym.Env], default_steps: int, *,
                max_episode_steps: int | None = None, **kw: Any) -> gym.Env:
    from gymnasium.wrappers import TimeLimit

    return TimeLimit(cls(**kw), max_episode_steps or default_steps)


def _gym(env_id: str, **kw: Any) -> gym.Env:
    from envs.gym_adapter import make_gym

    return make_gym(env_id, **kw)


def _robosuite(task: str, **kw: Any) -> gym.Env:
    from envs.robosuite_adapter import make_robosuite

    return make_robosuite(task, **kw)


def _libero(spec: str, **kw: Any) -> gym.Env:
    from envs.libero_adapter import make_libero

    return make_libero(spec, **kw)


register_env("reach", _reach)
register_env("push", _push)
register_env("lang_reach", _lang_reach)
register_env("lang_reach/", _lang_reach, "lang_reach/<colour>")
register_env("gym/", _gym, "gym/<gymnasium id>")
register_env("robosuite/", _robosuite, "robosuite/<task>")
register_env("libero/", _libero, "libero/<suite>/<task_id>")
