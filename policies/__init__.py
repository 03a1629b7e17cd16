"""Policies that ship to a robot: actor networks, encoders, BC / VLA wrappers.

A remote actor rebuilds a network from its JSON ``spec()`` with :func:`from_spec` and
then loads the weights it receives (tensors only, no pickle)::

    policy = policies.from_spec(learner.policy().spec())
    policy.load_state_dict(learner.policy_weights())
    actions = policy.act(obs_batch)

Each registry entry names ``"module:Class"`` so heavy modules import only when used;
the class takes the spec's fields (minus ``kind``) as constructor arguments.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping

REGISTRY: dict[str, str] = {
    "gaussian_actor": "policies.actor:GaussianActor",
    "iql_actor": "policies.iql:IQLPolicy",
}


def register(kind: str, target: str) -> None:
    """Add a policy class, given as ``"module:Class"``, under ``kind``."""
    REGISTRY[kind] = target


def from_spec(spec: Mapping[str, Any]):
    """JSON spec (``{"kind": ..., **constructor args}``) -> a freshly initialised policy."""
    if not isinstance(spec, Mapping) or "kind" not in spec:
        raise ValueError("a policy spec must be a dict with a 'kind' key, as returned by policy.spec()")
    kind = spec["kind"]
    if kind not in REGISTRY:
        raise ValueError(f"unknown policy kind {kind!r}; known: {sorted(REGISTRY)}")
    module, name = REGISTRY[kind].split(":")
    cls = getattr(importlib.import_module(module), name)
    try:
        return cls(**{k: v for k, v in spec.items() if k != "kind"})
    except TypeError as err:
        raise ValueError(f"policy spec for {kind!r} does not match {name}'s arguments: {err}") from None
