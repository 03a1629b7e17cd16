"""Schemas of the command-line configs (see :mod:`embodied.schema`): types and ranges of
every top-level setting, checked before anything is built or written."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from embodied.scale.labeling import RaySection
from embodied.scale.rollout import RolloutRaySection
from embodied.schema import num

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


@dataclass
class TrainSection:
    total_steps: int = num(ge=0)
    num_envs: int = num(ge=1)
    async_envs: bool = False
    warmup_steps: int = num(ge=0)
    learning_starts: int = num(ge=0)
    max_update_debt: int = num(ge=1)
    replay_capacity: int = num(ge=1)
    n_step: int = num(ge=1)
    gamma: float = num(gt=0, le=1)
    dataset: str | None = None
    offline_ratio: float = num(ge=0, le=1)
    offline_updates: int = num(ge=0)
    record_dataset: str | None = None
    record_fps: int = num(ge=1)
    threads: int = num(ge=1)
    curriculum: bool = False
    adapt_from: str | None = None
    ray: RolloutRaySection = field(default_factory=RolloutRaySection)


@dataclass
class EvalSection:
    every: int = num(ge=0)
    episodes: int = num(ge=1)
    video_episodes: int = num(ge=0)


@dataclass
class CheckpointSection:
    every: int = num(ge=1)
    keep: int = num(ge=1)


@dataclass
class LogSection:
    every: int = num(ge=1)
    level: LogLevel = "INFO"


@dataclass
class WandbSection:
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = ""


@dataclass
class EnvSection:
    name: str = ""
    pixels: bool = False
    cameras: list[str] | None = None
    image_size: int = num(ge=8)
    max_episode_steps: int | None = num(ge=1)


@dataclass
class TrainConfig:
    """``embodied-train`` (configs/config.yaml)."""

    seed: int = 0
    device: str = "cpu"
    run_name: str = ""
    run_dir: str = ""
    resume: bool = False
    base_policy: str | None = None
    policy: str | None = None
    env: EnvSection = field(default_factory=EnvSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
    wandb: WandbSection = field(default_factory=WandbSection)


@dataclass
class LabelConfig:
    """``embodied-label`` (configs/label.yaml)."""

    input: str = ""
    output: str = ""
    camera: str | None = None
    instruction: str | None = None
    repo_id: str | None = None
    plot_episodes: int = num(ge=0)
    seed: int = 0
    preference_pairs: int = num(ge=0)
    threads: int = num(ge=1)
    ray: RaySection = field(default_factory=RaySection)


def check_train_config(cfg) -> None:
    """An ``embodied-train`` config: types, ranges and the settings that go together."""
    from embodied.learners import check_learner_config
    from embodied.schema import check

    check(cfg, TrainConfig)
    check_learner_config(cfg.learner)
    t = cfg.train
    if cfg.learner.name in ("bc", "vla") and (not t.dataset or t.offline_updates < 1 or t.total_steps != 0):
        raise ValueError(f"learner={cfg.learner.name} clones a dataset's actions: set train.dataset=<LeRobotDataset path>, "
                         "train.offline_updates > 0 and train.total_steps=0")
    if t.offline_updates > 0 and not t.dataset:
        raise ValueError("train.offline_updates > 0 needs train.dataset=<LeRobotDataset path>")
    if cfg.learner.name == "residual":
        check_residual(cfg)
    elif cfg.get("base_policy"):
        raise ValueError(f"base_policy is read by learner=residual only; learner={cfg.learner.name} ignores it")
    if cfg.get("policy"):
        if cfg.learner.name != "ppo":
            raise ValueError(f"policy= (a saved policy to fine-tune) is read by learner=ppo only; "
                             f"learner={cfg.learner.name} ignores it")
        from policies.base import base_kind

        base_kind(str(cfg.policy), "policy")  # a folder (saved policy, run, LeRobot checkpoint) or a hub id
    if t.get("adapt_from"):
        check_adaptation(cfg)
    if cfg.env.name == "none":
        if not t.dataset:
            raise ValueError("env=none trains from a dataset alone: set train.dataset=<LeRobotDataset path>")
        if t.total_steps != 0 or t.offline_updates < 1:
            raise ValueError("env=none has no env to step: set train.total_steps=0 and train.offline_updates > 0")
        if cfg.reward.name != "env":
            raise ValueError("env=none reads the dataset's rewards (next.reward); label it first with "
                             "embodied-label and keep reward=env")
    from embodied.learners import learner_class

    if learner_class(cfg.learner.name).on_policy:
        check_on_policy(cfg)


def check_residual(cfg) -> None:
    """learner=residual: a base to correct, an env to act in; the demos it learns from."""
    from policies.base import base_kind

    base, t = cfg.get("base_policy"), cfg.train
    if not base:
        raise ValueError("learner=residual corrects a frozen base policy: set base_policy=<policy folder | "
                         "embodied-train run folder | LeRobot checkpoint folder | hub id>")
    base_kind(str(base))  # a missing folder is an error now, not after the env is built
    if cfg.env.name == "none":
        raise ValueError("learner=residual learns from acting in an env; choose one (env=none is offline only)")
    if t.n_step != 3 or not t.dataset:
        import logging

        logging.getLogger("embodied").info(
            "learner=residual: the ResFiT recipe uses train.n_step=3 and demonstrations (train.dataset=...); "
            "running with n_step=%d, dataset=%s", t.n_step, t.dataset)


def check_on_policy(cfg) -> None:
    """An on-policy learner (PPO): its rollout, the env and the reward must go together."""
    t, lr, name = cfg.train, cfg.learner, cfg.learner.name
    rows = lr.num_steps * t.num_envs
    if lr.num_envs != t.num_envs:
        raise ValueError(f"learner.num_envs={lr.num_envs} differs from train.num_envs={t.num_envs}; "
                         "leave learner.num_envs at ${train.num_envs}")
    if cfg.env.name == "none" or t.dataset or t.offline_updates:
        raise ValueError(f"learner={name} trains on-policy from its own rollouts: it takes no train.dataset, "
                         "train.offline_updates or env=none")
    if 0 < t.total_steps < rows:
        raise ValueError(f"train.total_steps={t.total_steps} is less than one rollout of learner.num_steps x "
                         f"train.num_envs = {lr.num_steps} x {t.num_envs} = {rows} steps; lower learner.num_steps")
    if t.replay_capacity < rows:
        raise ValueError(f"train.replay_capacity={t.replay_capacity} cannot hold one rollout of {rows} steps "
                         "(the reward labels live in the replay storage)")


@dataclass
class EvalConfig:
    """``embodied-eval`` (configs/eval.yaml)."""

    policy: str = ""
    tasks: str | int | list[int] | None = None
    episodes: int = num(ge=1)
    num_envs: int = num(ge=1)
    asynchronous: bool = False
    seed: int = 0
    video_episodes: int = num(ge=0)
    output: str = ""
    deterministic: bool = True
    device: str = "cpu"
    threads: int = num(ge=1)
    env: EnvSection = field(default_factory=EnvSection)


def check_eval_config(cfg) -> None:
    """An ``embodied-eval`` config: known keys, types, ranges, the settings that go together."""
    import dataclasses

    from embodied.schema import check

    known = {f.name for f in dataclasses.fields(EvalConfig)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown setting {unknown[0]!r}; embodied-eval takes {', '.join(sorted(known))}")
    from omegaconf import OmegaConf

    if OmegaConf.is_missing(cfg, "policy"):
        raise ValueError("policy is required: set policy=<run folder | policy folder | scripted | random>")
    check(cfg, EvalConfig)
    if cfg.env.name == "none":
        raise ValueError("env=none has nothing to roll out in; choose an env, e.g. env=libero_spatial or env=reach")
    if isinstance(cfg.tasks, str) and cfg.tasks != "all":
        raise ValueError(f"tasks must be null, all, or a list of task ids, got {cfg.tasks!r}")
    if cfg.env.get("init_state_id") is not None or cfg.env.get("init_state_stride", 1) != 1:
        raise ValueError("env.init_state_id / env.init_state_stride are set by embodied-eval (episode i starts "
                         "from the task's fixed init state i); leave them at null / 1")


def check_adaptation(cfg) -> None:
    """``train.adapt_from``: RePo's test-time adaptation needs a world model and the source run's saved replay."""
    from pathlib import Path

    from embodied import checkpoint

    if cfg.learner.name != "world_model" or cfg.learner.get("objective") != "repo":
        raise ValueError("train.adapt_from adapts a RePo world model to a new visual domain: set learner=world_model "
                         "objective=repo (the source run's settings)")
    source = Path(str(cfg.train.adapt_from)).expanduser()
    if checkpoint.latest(source / "checkpoints") is None:
        raise FileNotFoundError(f"train.adapt_from={cfg.train.adapt_from} holds no saved source replay: pass the "
                                "embodied-train run folder of the source run (its checkpoints/ keep the learner and "
                                "the replay)")
