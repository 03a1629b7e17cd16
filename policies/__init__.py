"""Policies that ship to a robot: actor networks, encoders, BC / VLA wrappers.

A remote actor rebuilds a network from its JSON ``spec()`` with :func:`from_spec` and
then loads the weights it receives (tensors only, no pickle)::

    policy = policies.from_spec(learner.policy().spec())
    policy.load_state_dict(learner.policy_weights())
    actions = policy.act(obs_batch)

:func:`save_policy` / :func:`load_policy` keep a policy on disk the same way: its JSON spec
and its weights in one atomic checkpoint folder (``embodied.checkpoint``), never a pickle.
Every ``embodied-train`` run writes its current policy to ``<run_dir>/policy/``.

Each registry entry names ``"module:Class"`` so heavy modules import only when used;
the class takes the spec's fields (minus ``kind``) as constructor arguments.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

REGISTRY: dict[str, str] = {
    "gaussian_actor": "policies.actor:GaussianActor",
    "iql_actor": "policies.iql:IQLPolicy",
    "ppo_actor_critic": "policies.ppo:PPOPolicy",
    "bc": "policies.bc:BCPolicy",
    "residual": "policies.residual:ResidualPolicy",
    "native_vla": "policies.vla.native:NativeVLA",
    "autoregressive_vla": "policies.vla.autoregressive:AutoregressiveVLA",
    "flow_vla": "policies.vla.flow_rl:FlowVLAActorCritic",
    "world_model_actor": "policies.world_model:LatentPolicy",
}


def register(kind: str, target: str) -> None:
    """Add a policy class, given as ``"module:Class"``, under ``kind``."""
    REGISTRY[kind] = target


def from_spec(spec: Mapping[str, Any], **objects: Any):
    """JSON spec (``{"kind": ..., **constructor args}``) -> a freshly initialised policy.
    ``objects``: built things the class takes besides its spec (a residual's loaded ``base``)."""
    if not isinstance(spec, Mapping) or "kind" not in spec:
        raise ValueError("a policy spec must be a dict with a 'kind' key, as returned by policy.spec()")
    kind = spec["kind"]
    if kind not in REGISTRY:
        raise ValueError(f"unknown policy kind {kind!r}; known: {sorted(REGISTRY)}")
    module, name = REGISTRY[kind].split(":")
    cls = getattr(importlib.import_module(module), name)
    try:
        return cls(**{k: v for k, v in spec.items() if k != "kind"}, **objects)
    except TypeError as err:
        raise ValueError(f"policy spec for {kind!r} does not match {name}'s arguments: {err}") from None


def save_policy(policy: Any, folder: str | os.PathLike, step: int = 0) -> Path:
    """Write ``policy``'s JSON ``spec()`` and ``state_dict()`` to ``folder`` atomically
    (a checkpoint ``step_<step>/`` plus the ``latest`` marker; older versions removed)."""
    from embodied import checkpoint

    return checkpoint.save(folder, int(step), {"spec": json.dumps(policy.spec()), "weights": policy.state_dict()},
                           keep=1)


def load_policy(folder: str | os.PathLike, device: str = "cpu"):
    """The policy saved by :func:`save_policy` in ``folder``, or in ``folder/policy`` (an
    ``embodied-train`` run folder); rebuilt with :func:`from_spec`, weights loaded, eval mode.
    A folder holding neither raises a one-line error naming what is missing."""
    from embodied import checkpoint

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"policy folder {folder} does not exist")
    found = checkpoint.latest(folder) or checkpoint.latest(folder / "policy")
    if found is None:
        raise FileNotFoundError(
            f"{folder} holds no saved policy: expected {folder / 'policy'}/ (an embodied-train run folder) or a "
            "folder written by policies.save_policy (a 'latest' marker and step_*/state.pt)")
    state = checkpoint.load(found, map_location=device)
    missing = [k for k in ("spec", "weights") if k not in state]
    if missing:
        raise ValueError(f"{found} is a checkpoint but not a saved policy (it lacks {missing[0]!r}); "
                         "for a training run pass the run folder, whose policy/ holds the policy")
    try:
        spec = json.loads(state["spec"])
    except (TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"{found}: the saved policy spec is not JSON ({err})") from None
    policy = from_spec(spec)
    try:
        policy.load_state_dict(state["weights"])
    except RuntimeError as err:
        raise ValueError(f"{found}: the saved weights do not fit the {spec.get('kind')!r} spec: "
                         f"{str(err).splitlines()[0]}") from None
    if hasattr(policy, "to"):
        policy.to(device)
    if hasattr(policy, "eval"):
        policy.eval()
    return policy
