"""Schemas of ``embodied-learner``, ``embodied-actor`` and the policy server (see :mod:`embodied.schema`):
types and ranges checked before a socket is bound or a robot is touched."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from embodied.schema import num

Fsync = Literal["batch", "interval", "never"]


@dataclass
class Spaces:
    state_dim: int = num(ge=0)
    action_dim: int = num(ge=1)
    cameras: list[str] = field(default_factory=list)
    image_size: int = num(ge=8)


@dataclass
class Bridge:
    bind: str = ""
    secret_key: str | None = None
    allow_dir: str | None = None
    insecure_loopback: bool = False
    log_fsync: Fsync = "batch"
    max_batch_messages: int = num(ge=1)


@dataclass
class LearnerTrain:
    replay_capacity: int = num(ge=2)
    offline_capacity: int = num(ge=2)
    offline_ratio: float = num(ge=0, le=1)
    n_step: int = num(ge=1)
    gamma: float = num(gt=0, le=1)
    learning_starts: int = num(ge=0)
    utd_ratio: float = num(gt=0)
    updates_per_pump: int = num(ge=1)
    publish_every: int = num(ge=1)
    threads: int = num(ge=1)
    max_seconds: float = num(ge=0)


@dataclass
class LearnerCheckpoint:
    every_seconds: float = num(gt=0)
    learner_every_seconds: float = num(gt=0)
    keep: int = num(ge=1)


@dataclass
class LearnerServerConfig:
    """``embodied-learner`` (configs/learner_server.yaml)."""

    seed: int = 0
    run_dir: str = ""
    demos: str | None = None
    base_policy: str | None = None
    spaces: Spaces = field(default_factory=Spaces)
    bridge: Bridge = field(default_factory=Bridge)
    train: LearnerTrain = field(default_factory=LearnerTrain)
    checkpoint: LearnerCheckpoint = field(default_factory=LearnerCheckpoint)


@dataclass
class Safety:
    low: float = -1.0
    high: float = 1.0
    max_delta: float = num(gt=0)
    watchdog_deadline: float = num(gt=0)
    watchdog_period: float = num(gt=0)


@dataclass
class Link:
    fsync: Fsync = "batch"
    connect_timeout: float = num(ge=0)
    heartbeat: float = num(gt=0)
    learner_timeout: float = num(gt=0)
    resend_after: float = num(gt=0)
    shutdown_wait: float = num(ge=0)


@dataclass
class Remote:
    server_key: str | None = None
    connect_timeout: float = num(gt=0)
    reply_timeout: float = num(gt=0)
    prefetch: int = num(ge=0)


@dataclass
class ActorConfig:
    """``embodied-actor`` (configs/actor.yaml); ``loop`` is checked against :class:`LoopConfig`."""

    actor_id: str = ""
    connect: str | None = ""
    seed: int = 0
    insecure_loopback: bool = False
    base_policy: str | None = None
    policy: str | None = None
    safety: Safety = field(default_factory=Safety)
    link: Link = field(default_factory=Link)
    remote: Remote = field(default_factory=Remote)


@dataclass
class PolicyServerConfig:
    """``python -m real_robot.remote_policy`` (configs/policy_server.yaml)."""

    policy: str | None = None
    device: str = "auto"
    execute: int | None = num(ge=1)
    threads: int = num(ge=1)
    max_seconds: float = num(ge=0)
    run_dir: str = ""
    bridge: Bridge = field(default_factory=Bridge)


def check_learner_server_config(cfg) -> None:
    from embodied.learners import check_learner_config
    from embodied.schema import check

    check(cfg, LearnerServerConfig)
    check_learner_config(cfg.learner)
    from embodied.learners import learner_class

    if learner_class(cfg.learner.name).on_policy:
        raise ValueError(f"learner={cfg.learner.name} trains on-policy from its own rollouts (embodied-train); "
                         "the learner server trains off-policy learners (sac, iql) from streamed transitions")
    if cfg.learner.name == "residual":
        from policies.base import base_kind

        if not cfg.get("base_policy"):
            raise ValueError("learner=residual corrects a frozen base policy: set base_policy=<the base checkpoint>")
        base_kind(str(cfg.base_policy))


def check_actor_config(cfg) -> None:
    from embodied.build import to_dict
    from embodied.schema import check
    from real_robot.actor import LoopConfig

    check(cfg, ActorConfig)
    if cfg.get("policy") is not None:
        from real_robot.remote_policy import parse_remote

        parse_remote(cfg.policy)  # a malformed address is an error before anything starts
        if cfg.get("base_policy"):
            raise ValueError("policy=remote:... acts with the policy server's chunks; base_policy= (residual RL) "
                             "needs the learner's weights: set one of them")
    elif not cfg.get("connect"):
        raise ValueError("connect=null runs the actor without a learner: it then needs policy=remote:<host>:<port>")
    if cfg.get("base_policy"):
        from policies.base import base_kind

        base_kind(str(cfg.base_policy))  # a missing base is an error before the robot is touched
    loop = to_dict(cfg.loop)
    loop.pop("threads", None)
    check(loop, LoopConfig, "loop.")


def check_policy_server_config(cfg) -> None:
    from embodied.schema import check
    from policies.base import base_kind

    check(cfg, PolicyServerConfig)
    if not cfg.get("policy"):
        raise ValueError("policy=<folder> is required: a saved policy or embodied-train run folder, a LeRobot "
                         "checkpoint folder or a hub id")
    try:
        base_kind(str(cfg.policy))  # a missing folder is an error before the socket is bound
    except (ValueError, FileNotFoundError) as err:  # base_kind names its own key
        raise type(err)(str(err).replace("base_policy=", "policy=", 1)) from None
    device = str(cfg.device)
    if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:<index>, got {device!r}")
