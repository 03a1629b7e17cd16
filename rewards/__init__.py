"""VLM reward modules behind one interface (:class:`embodied.RewardModel`).

``make_reward(name, **cfg)`` builds one by name; modules are imported lazily so a
missing optional dependency only matters when that module is chosen.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> "module:factory"; each factory takes keyword arguments from the reward config.
REGISTRY: dict[str, str] = {
    "clip": "rewards.clip:CLIPReward",
    "gvl": "rewards.gvl:GVLReward",
    "vlac": "rewards.vlac:VLACReward",
    "rlvlmf": "rewards.rlvlmf:RLVLMFReward",
}


def make_reward(name: str, **cfg: Any):
    """Build the reward module ``name`` (``env`` means: use the environment's reward)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown reward {name!r}; choose one of: env, {', '.join(sorted(REGISTRY))}")
    module, factory = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), factory)(**cfg)


def find_oracle(model):
    """The ground-truth oracle inside a reward model, or None: RL-VLM-F's scripted
    preference labeler, or the scripted VLM (possibly behind the cache). Both keep a
    ``progress`` table (image hash -> true progress) that tests and demonstrations fill."""
    from rewards.backends.scripted import ScriptedBackend

    if isinstance(getattr(getattr(model, "oracle", None), "progress", None), dict):
        return model.oracle
    backend = getattr(model, "backend", None)
    while backend is not None and not isinstance(backend, ScriptedBackend):
        backend = getattr(backend, "backend", None)
    return backend
