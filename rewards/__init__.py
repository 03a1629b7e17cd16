"""VLM reward modules behind one interface (:class:`embodied.RewardModel`).

``make_reward(name, **cfg)`` builds one by name; modules are imported lazily so a
missing optional dependency only matters when that module is chosen.
"""

from __future__ import annotations

import importlib
from typing import Any

from rewards.oracle import find_oracle  # noqa: F401  (re-exported: the oracle inside a module)

# name -> "module:factory"; each factory takes keyword arguments from the reward config.
REGISTRY: dict[str, str] = {
    "clip": "rewards.clip:CLIPReward",
    "gvl": "rewards.gvl:GVLReward",
    "vlac": "rewards.vlac:VLACReward",
    "rlvlmf": "rewards.rlvlmf:RLVLMFReward",
}


def reward_class(name: str):
    """The class registered as ``name``, to read its declaration (granularity, asynchronous)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown reward {name!r}; choose one of: env, {', '.join(sorted(REGISTRY))}")
    module, factory = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), factory)


def make_reward(name: str, **cfg: Any):
    """Build the reward module ``name`` (``env`` means: use the environment's reward)."""
    return reward_class(name)(**cfg)
