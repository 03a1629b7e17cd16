"""The composition root: config sections turn into objects here, for every entry point.

``embodied-train``, ``embodied-learner``, ``embodied-label`` and ``embodied-eval-reward``
all build their reward module through :func:`build_reward`, so a reward config means
the same thing wherever it is used: the keys the training loop reads (``LOOP_KEYS``)
go to the :class:`~embodied.labeling.RewardLabeler`, the rest to the module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

# Reward config keys read by the labeler (embodied/labeling.py), never by the module itself.
LOOP_KEYS = ("chunk", "max_pending", "workers", "scale", "feedback_every", "feedback_queries", "oracle")


@dataclass
class RewardBuild:
    """A reward config split into the module and how the labeler drives it."""

    name: str
    model: Any = None  # a RewardModel, or None for the env's own reward
    labeler: dict[str, Any] = field(default_factory=dict)  # RewardLabeler keyword arguments

    @property
    def oracle(self):
        """The scripted ground-truth oracle inside the module when ``oracle=true``, else None."""
        if not self.labeler.get("oracle") or self.model is None:
            return None
        from rewards import find_oracle

        return find_oracle(self.model)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config section (DictConfig or mapping) as a plain, resolved dict."""
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def build_reward(cfg: Any) -> RewardBuild:
    """``reward:`` config -> :class:`RewardBuild` (``name: env`` gives no model)."""
    kw = to_dict(cfg)
    name = kw.pop("name", None)
    if not isinstance(name, str):
        raise ValueError("reward.name is missing; choose reward=env, clip, gvl, vlac or rlvlmf")
    labeler = {k: kw.pop(k) for k in LOOP_KEYS if k in kw}
    if name == "env":
        if kw or labeler:
            raise ValueError(f"reward=env takes no settings, got reward.{sorted({*kw, *labeler})[0]}")
        return RewardBuild("env")
    from rewards import make_reward

    built = RewardBuild(name, make_reward(name, **kw), labeler)
    if labeler.get("oracle") and built.oracle is None:
        raise ValueError("reward.oracle=true needs a scripted oracle: reward.backend.kind=scripted "
                         "(GVL, VLAC) or reward.labeler=scripted (RL-VLM-F)")
    return built


def reward_camera(model: Any, cameras: list[str], where: str) -> str:
    """The camera a reward module reads: its own ``camera`` setting, else the first one."""
    camera = getattr(model, "camera", None) or (cameras[0] if cameras else None)
    if camera is None or camera not in cameras:
        raise ValueError(f"the reward reads camera {camera!r} but {where} has cameras {cameras}; "
                         f"set reward.camera or add the camera")
    return camera


def make_labeler(replay, built: RewardBuild, camera: str | None):
    """A :class:`~embodied.labeling.RewardLabeler` for ``replay`` driven as the config says."""
    from embodied.labeling import RewardLabeler

    return RewardLabeler(replay, built.model, camera=camera, **built.labeler)


def learner_kwargs(cfg: Mapping[str, Any] | Any, device: str | None = None) -> tuple[str, list[str], dict[str, Any]]:
    """``learner:`` config -> (name, inputs, make_learner kwargs)."""
    kw = to_dict(cfg)
    name = kw.pop("name")
    inputs = list(kw.pop("inputs", ["state"]))
    if device is not None:
        kw.setdefault("device", device)
    return name, inputs, kw
