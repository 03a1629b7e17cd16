"""Frozen base policies for residual RL: load one from a path or hub id, check it fits the env.

``load_base(source)`` takes

- a folder written by :func:`policies.save_policy`, or an ``embodied-train`` run folder
  (its ``policy/``): the project's own policies (``learner=bc`` trains them);
- a LeRobot checkpoint folder (``config.json`` + ``model.safetensors``, e.g.
  ``outputs/train/act/checkpoints/last/pretrained_model``) or a hub id: ACT, Diffusion
  Policy, SmolVLA through :class:`policies.lerobot_policy.LeRobotPolicy`.

Either way the result implements :class:`embodied.Policy` (chunked or not), is frozen
(no gradients, eval mode) and is played by the project's chunk executor with a queue per
env. :func:`check_base` compares what the base reads and emits with the env's spaces, so
a mismatch is a one-line error before any env step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _lerobot_folder(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return "type" in json.loads(config.read_text())
    except (OSError, json.JSONDecodeError):
        return False


def base_kind(source: str, key: str = "base_policy") -> str:
    """``"project"`` (a saved policy or run folder), ``"lerobot"`` (a LeRobot checkpoint
    folder) or ``"hub"`` (an ``owner/name`` id); a path that does not exist is an error.
    A string is read as a hub id only when it is ``owner/name`` and ``owner`` is not a
    local folder (``runs/push_bc`` with ``runs/`` present is a missing path, not a hub id)."""
    import re

    if not isinstance(source, str) or not source:
        raise ValueError("base_policy is required for learner=residual: a saved policy folder, an embodied-train "
                         "run folder, a LeRobot checkpoint folder or a hub id")
    path = Path(source).expanduser()
    if path.is_dir():
        return "lerobot" if _lerobot_folder(path) else "project"
    if path.exists():
        raise ValueError(f"{key}={source} is a file; pass the folder that holds the policy")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not path.parent.is_dir() and not source.startswith("."):
        return "hub"
    raise FileNotFoundError(f"{key}={source} does not exist (no such folder, and not a hub id owner/name)")


def load_base(source: str, device: str = "cpu", key: str = "base_policy", **lerobot_kw: Any):
    """The frozen base policy ``source`` names (see the module docstring); one-line errors
    for a path that holds no policy."""
    from policies import load_policy

    kind = base_kind(source, key)
    if kind == "project":
        policy = load_policy(Path(source).expanduser(), device=device)
    else:
        from policies.lerobot_policy import LeRobotPolicy

        policy = LeRobotPolicy(source, device=device, **lerobot_kw)
    if hasattr(policy, "requires_grad_"):
        policy.requires_grad_(False)
    if hasattr(policy, "eval"):
        policy.eval()
    return policy


def base_io(policy) -> dict[str, Any]:
    """What a base reads and emits: ``{"action_dim", "state_dim", "cameras": {name: shape}}``
    (``None`` where the policy does not say)."""
    if hasattr(policy, "io"):
        return policy.io()
    spec = policy.spec() if hasattr(policy, "spec") else {}
    return {"action_dim": spec.get("action_dim"), "state_dim": spec.get("state_dim"),
            "cameras": spec.get("cameras")}


def check_base(policy, obs_space, action_space, source: str = "the base policy") -> None:
    """One-line error when ``policy`` does not fit the env's observation or action space."""
    io = base_io(policy)
    spaces = obs_space.spaces
    action_dim = int(action_space.shape[0])
    if io.get("action_dim") is not None and int(io["action_dim"]) != action_dim:
        raise ValueError(f"base_policy={source} emits {io['action_dim']}-dim actions, the env takes {action_dim}: "
                         "train the base on this env's demonstrations")
    state_dim = io.get("state_dim")
    env_state = int(spaces["state"].shape[0]) if "state" in spaces else 0
    if state_dim and int(state_dim) != env_state:
        raise ValueError(f"base_policy={source} reads a {state_dim}-dim state, the env observes {env_state}: "
                         "train the base on this env's demonstrations")
    env_cams = {c: tuple(s.shape) for c, s in spaces["pixels"].spaces.items()} if "pixels" in spaces else {}
    for cam, shape in (io.get("cameras") or {}).items():
        if cam not in env_cams:
            raise ValueError(f"base_policy={source} reads camera {cam!r}, the env has {sorted(env_cams) or 'none'}: "
                             "set env.pixels=true / env.cameras, or use a base trained on these cameras")
        if shape is not None and tuple(shape) != env_cams[cam]:
            raise ValueError(f"base_policy={source} reads {cam!r} frames of shape {tuple(shape)}, the env renders "
                             f"{env_cams[cam]}: set env.image_size to match")
