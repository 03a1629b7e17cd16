"""The composition root: config sections turn into objects here, for every entry point.

``embodied-train``, ``embodied-learner``, ``embodied-label`` and ``embodied-eval-reward``
build their reward module through :func:`build_reward`, so a reward config means the same
thing wherever it is used: the keys the training loop reads (``LOOP_KEYS``) go to the
:class:`~embodied.labeling.RewardLabeler`, the rest to the module. ``embodied-train`` and
``embodied-learner`` build their replays with :func:`build_replays` and their learner with
:func:`build_learner`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

# Reward config keys read by the labeler (embodied/labeling.py), never by the module itself.
LOOP_KEYS = ("chunk", "max_pending", "workers", "scale", "feedback_every", "feedback_queries", "oracle", "env_weight")


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
        from rewards.oracle import find_oracle

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


def seeded_reward(cfg: Mapping[str, Any], seed: int):
    """The reward module of ``cfg`` built with torch seeded to ``seed`` first (random weights of a
    tiny test model are then the same wherever it is built): what a labeling actor calls."""
    import torch

    torch.manual_seed(int(seed))
    return build_reward(cfg).model


def reward_camera(model: Any, cameras: list[str], where: str) -> str:
    """The camera a reward module reads: its own ``camera`` setting, else the first one."""
    camera = getattr(model, "camera", None) or (cameras[0] if cameras else None)
    if camera is None or camera not in cameras:
        raise ValueError(f"the reward reads camera {camera!r} but {where} has cameras {cameras}; "
                         f"set reward.camera or add the camera")
    return camera


def make_labeler(replay, built: RewardBuild, camera: str | None):
    """A :class:`~embodied.labeling.RewardLabeler` for ``replay`` driven as the config says;
    ``reward.oracle=true`` adds the tap that feeds the scripted oracle the sim's truth."""
    from embodied.labeling import RewardLabeler

    kw = {k: v for k, v in built.labeler.items() if k != "oracle"}
    taps = []
    if built.oracle is not None:
        from rewards.oracle import OracleFeed

        taps.append(OracleFeed(built.oracle, camera))
    return RewardLabeler(replay, built.model, camera=camera, taps=taps, **kw)


def learner_space(obs_space, inputs):
    """The part of the observation space the learner reads (``learner.inputs``)."""
    import gymnasium as gym

    missing = [k for k in inputs if k not in obs_space.spaces]
    if missing:
        raise ValueError(f"learner.inputs asks for {missing} but the env observes only "
                         f"{sorted(obs_space.spaces)}; set env.pixels=true or change learner.inputs")
    return gym.spaces.Dict({k: obs_space[k] for k in inputs})


def build_base(source: str | None, device: str = "cpu"):
    """``base_policy=`` -> the frozen base policy a residual learner corrects."""
    from policies.base import load_base

    return load_base(source, device=device)


def build_learner(cfg: Any, obs_space, action_space, device: str | None = None, offline=None,
                  base_policy: str | None = None, policy: str | None = None):
    """``learner:`` config -> a :class:`~embodied.contracts.Learner` on the spaces it reads;
    ``offline`` (a replay) is shown to it once before training (``prepare_offline``);
    ``base_policy`` (a path or hub id) is loaded for ``learner=residual``; ``policy`` (a saved
    policy or run folder) is the starting point ``learner=ppo`` fine-tunes."""
    from pathlib import Path

    from embodied.learners import make_learner

    name, inputs, kw = learner_kwargs(cfg, device)
    objects = None
    if name == "residual":
        from policies.base import base_kind, check_base

        base = build_base(base_policy, device or "cpu")
        check_base(base, obs_space, action_space, str(base_policy))  # the env's whole space: a base may read pixels
        source = str(base_policy) if base_kind(str(base_policy)) == "hub" else str(Path(base_policy).expanduser().resolve())
        objects = {"base": base, "base_source": source}  # absolute: the saved policy loads from any folder
    elif policy:  # a saved project policy or run folder, or a LeRobot flow VLA (folder or hub id)
        from policies.base import base_kind, load_base

        hub = base_kind(str(policy), "policy") == "hub"
        source = str(policy) if hub else str(Path(policy).expanduser().resolve())  # a saved policy loads anywhere
        objects = {"policy": load_base(source, device=device or "cpu", key="policy"), "policy_source": source}
    learner = make_learner(name, learner_space(obs_space, inputs), action_space, objects, **kw)
    if offline is not None and len(offline):
        learner.prepare_offline(offline)
    return learner


@dataclass
class Replays:
    """The online replay, the offline (RLPD) half when there is one, and what is sampled:
    the online replay alone, or a mix taking ``offline_ratio`` of each batch offline."""

    online: Any
    offline: Any = None
    offline_ratio: float = 0.5

    def __post_init__(self):
        from embodied.replay import MixedReplay

        self.sampled = self.online if self.offline is None else \
            MixedReplay(self.online, self.offline, offline_ratio=self.offline_ratio)


def build_replays(train: Any, obs_space, action_space, seed: int, *, capacity: int, dataset: str | None = None,
                  offline_capacity: int | None = None, offline_seed: int | None = None, bounds=None,
                  keys=None, rewards: bool = True) -> Replays:
    """``train:`` settings (n_step, gamma, offline_ratio) -> replays. The offline half holds
    ``dataset`` (a LeRobotDataset, actions mapped with ``bounds``, columns named by ``keys``,
    a :class:`~embodied.datasets.keys.DatasetKeys`), or starts empty with
    ``offline_capacity`` rows (the learner server's interventions); none without either.
    ``rewards=False`` (behaviour cloning): the dataset's rewards are not read (zeros)."""
    from embodied.replay import Replay

    kw = dict(n_step=int(train.n_step), gamma=float(train.gamma))
    online = Replay(capacity, obs_space, action_space, seed=seed, **kw)
    offline_seed = seed if offline_seed is None else offline_seed
    offline = None
    if dataset:
        from embodied.datasets import load_replay

        from embodied.datasets.keys import DEFAULT_KEYS

        offline = load_replay(dataset, obs_space, action_space, seed=offline_seed, capacity=offline_capacity,
                              bounds=bounds, keys=keys or DEFAULT_KEYS, reward_key=None if rewards else "none", **kw)
    elif offline_capacity:
        offline = Replay(offline_capacity, obs_space, action_space, seed=offline_seed, offline=True, **kw)
    return Replays(online, offline, float(train.offline_ratio))


def learner_kwargs(cfg: Mapping[str, Any] | Any, device: str | None = None) -> tuple[str, list[str], dict[str, Any]]:
    """``learner:`` config -> (name, inputs, make_learner kwargs)."""
    kw = to_dict(cfg)
    name = kw.pop("name")
    inputs = list(kw.pop("inputs", ["state"]))
    if device is not None:
        kw.setdefault("device", device)
    return name, inputs, kw
