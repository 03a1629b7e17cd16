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
    "ppo": ("embodied.learners.ppo", "PPO", "PPOConfig"),
    "bc": ("embodied.learners.bc", "BC", "BCConfig"),
    "residual": ("embodied.learners.residual", "Residual", "ResidualConfig"),
    "vla": ("embodied.learners.vla", "VLABC", "VLAConfig"),
    "world_model": ("embodied.learners.world_model", "WorldModel", "WorldModelConfig"),
}


def _config_class(name: str):
    if name not in REGISTRY:
        raise ValueError(f"unknown learner {name!r}; choose one of: {', '.join(sorted(REGISTRY))}")
    module, cls_name, cfg_name = REGISTRY[name]
    mod = importlib.import_module(module)
    return getattr(mod, cls_name), getattr(mod, cfg_name)


def check_learner_config(section: Any) -> None:
    """A ``learner:`` config section: known name, known keys, each value of its field's type."""
    from embodied.build import to_dict
    from embodied.schema import check

    cfg = to_dict(section)
    _, config_cls = _config_class(cfg.pop("name", None))
    inputs = cfg.pop("inputs", ["state"])
    if not (isinstance(inputs, (list, tuple)) and inputs and set(inputs) <= {"state", "pixels", "instruction"}):
        raise ValueError(f"learner.inputs must be a list of state, pixels and/or instruction, got {inputs!r}")
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(cfg) - fields)
    if unknown:
        raise ValueError(f"unknown learner.{unknown[0]} for {section.get('name')}; valid keys: {', '.join(sorted(fields))}")
    check(cfg, config_cls, "learner.")
    config_cls(**cfg)  # settings that go together (a config's __post_init__), e.g. PPO's minibatch split


def learner_class(name: str):
    """The learner class registered as ``name`` (e.g. to read ``on_policy`` before building it)."""
    return _config_class(name)[0]


def make_learner(name: str, obs_space, action_space, objects: dict[str, Any] | None = None, **cfg: Any):
    """Build learner ``name``; unknown keys or values of the wrong type are an error that names them.
    ``objects``: built things the learner takes besides its config (a residual's base policy)."""
    learner_cls, config_cls = _config_class(name)
    check_learner_config({"name": name, **cfg})
    import gymnasium as gym

    if isinstance(action_space, gym.spaces.MultiDiscrete) and not learner_cls.discrete_actions:
        raise ValueError(f"learner={name} acts in a continuous [-1, 1] box, but the env's actions are discrete "
                         f"({action_space}): use learner=ppo learner.head=categorical")
    for key, value in cfg.items():
        if isinstance(value, list):
            cfg[key] = tuple(value)
    return learner_cls(obs_space, action_space, config_cls(**cfg), **(objects or {}))
