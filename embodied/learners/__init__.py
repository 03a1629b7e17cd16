"""Learners (:class:`embodied.Learner`), built by name from a config group.

Each learner module holds one ``<Name>Config`` dataclass and the learner class; adding
a learner (PPO, residual TD3, a world model) is one registry line.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

REGISTRY: dict[str, tuple[str, str, str]] = {
    "sac": ("embodied.learners.sac", "SAC", "SACConfig"),
    "iql": ("embodied.learners.iql", "IQL", "IQLConfig"),
}


def make_learner(name: str, obs_space, action_space, **cfg: Any):
    """Build learner ``name``; unknown config keys are an error that names them."""
    if name not in REGISTRY:
        raise ValueError(f"unknown learner {name!r}; choose one of: {', '.join(sorted(REGISTRY))}")
    module, cls_name, cfg_name = REGISTRY[name]
    mod = importlib.import_module(module)
    config_cls = getattr(mod, cfg_name)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(cfg) - fields)
    if unknown:
        raise ValueError(f"unknown learner.{unknown[0]} for {name}; valid keys: {', '.join(sorted(fields))}")
    for key, value in cfg.items():
        if isinstance(value, list):
            cfg[key] = tuple(value)
    return getattr(mod, cls_name)(obs_space, action_space, config_cls(**cfg))
