"""The contracts of embodied-rl: read this file as the spec.

Everything that moves between an environment, a policy, a reward model, the replay and
a learner follows these conventions, whether the environment is a simulator or a robot
behind the ZMQ bridge.

Observation
    A dict. ``"pixels"``: ``{camera_name: (H, W, 3) uint8}``; ``"state"``: float32 vector;
    ``"instruction"``: str. An env that lacks one of them leaves the key out, and its
    ``observation_space`` (a ``gymnasium.spaces.Dict``) says what is there.
    A *batch* of observations has the same keys with a leading batch axis
    (``instruction`` becomes a list of str).
Action
    float32 in [-1, 1]; env adapters map to simulator or robot units.
Transition
    :class:`Transition` below. ``terminated`` and ``truncated`` are kept apart: a
    time-limit truncation bootstraps, a termination does not. ``info`` carries ground
    truth (``success``, ``progress``) for evaluation; learners never read it.
Policy
    :class:`Policy`: ``act(obs_batch) -> (B, A)`` actions, or ``(B, K, A)`` chunks when
    ``chunk_size > 1``. Its ``state_dict()`` is exactly what an actor loads. Loops call
    ``step(obs_batch, state) -> PolicyStep`` (actions plus optional log-prob, value, extras
    and per-env state) and ``reset(env_ids)`` at episode boundaries; chunks are played by
    one :class:`policies.chunking.ChunkExecutor` (a queue per env) in the Driver,
    evaluation and the robot actor. :class:`PolicyBase` gives stateless policies both.
    A per-env ``state`` object with a ``reset(env_ids)`` method (a residual policy's base
    queues) is reset by the executor at the same boundaries.
RewardModel
    :class:`RewardModel`: labels frames (``granularity="frame"``), frame pairs
    (``"pair"``) or whole episodes (``"episode"``) given the task instruction; says
    whether it trains and whether it is slow enough to run asynchronously.
Learner
    :class:`Learner`: ``update(batch) -> {name: float}``; ``losses(batch)`` returns the
    named terms ``{"loss/<term>": tensor}`` and ``loss_owners()`` the parameters each one
    may move; ``rows_per_update`` says how many replay rows one ``update`` takes and
    ``prepare_offline(replay)`` runs before an offline phase (dataset statistics).
    ``policy_weights()`` is what ships to actors, apart from ``state_dict()`` (critics,
    targets, temperatures and optimisers stay on the learner). A learner with a
    ``warmup_policy()`` acts with it during ``train.warmup_steps`` instead of uniform random
    actions (residual RL: the base plus noise, carrying the same extras as its policy). An ``on_policy`` learner
    (PPO) trains on whole rollouts instead: ``update_rollout(rollout, last_value)`` with a
    :class:`embodied.replay.RolloutBuffer` its own policy filled, and that policy has
    ``value(obs)`` for bootstrapping.
Checkpoint
    Everything stateful exposes ``state_dict()`` / ``load_state_dict()`` and is saved
    together through :mod:`embodied.checkpoint`, written atomically.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

Obs = dict[str, Any]
"""One observation: {"pixels": {cam: HxWx3 uint8}, "state": float32[D], "instruction": str}."""

OBS_KEYS = ("pixels", "state", "instruction")


@dataclass
class Transition:
    """One environment step ``obs --action--> next_obs``.

    ``next_obs`` is only a reference for the replay: it stores each observation once
    and rebuilds ``next_obs`` from the following slot (or a stored final observation
    when the episode ended).
    """

    obs: Obs
    action: np.ndarray
    reward: float
    next_obs: Obs
    terminated: bool
    truncated: bool
    is_first: bool
    episode_id: int
    step: int
    intervention: bool = False
    info: dict[str, Any] = field(default_factory=dict)  # ground truth; learners never read it
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    """What the policy step produced besides the action (``log_prob``, ``value``,
    ``base_action``, action tokens): numeric arrays of a fixed shape per key, stored as
    replay columns and carried by the bridge."""

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


@runtime_checkable
class Policy(Protocol):
    """What runs on the robot. ``act`` takes a batch and returns float32 in [-1, 1]."""

    chunk_size: int  # 1 for single actions, K for action chunks (B, K, A)

    def act(self, obs: Obs, deterministic: bool = False) -> np.ndarray: ...

    def spec(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments: ``policies.from_spec(spec)`` rebuilds
        the same network on an actor, which then loads the weights (no pickle)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> Any: ...

    def step(self, obs: Obs, state: Any = None, deterministic: bool = False) -> "PolicyStep":
        """One step for a batch of envs: actions (or chunks) plus what the learner keeps."""
        ...

    def reset(self, env_ids: Sequence[int] | None = None) -> None:
        """Forget per-env state of ``env_ids`` (all when None): an episode ended there."""
        ...


@dataclass
class PolicyStep:
    """What :meth:`Policy.step` returns for a batch of ``B`` envs."""

    action: np.ndarray  # (B, A) float32 in [-1, 1], or (B, K, A) action chunks
    log_prob: np.ndarray | None = None  # (B,) log-probability of the sampled action (on-policy learners)
    value: np.ndarray | None = None  # (B,) the policy's value estimate, when it has a value head
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # (B, ...) per key: base actions, tokens
    state: Any = None  # per-env recurrent state, passed back on the next step

    def per_env(self, i: int) -> dict[str, np.ndarray]:
        """Env ``i``'s part for :attr:`Transition.extras` (log_prob and value included)."""
        out = {k: np.asarray(v[i]) for k, v in self.extras.items()}
        for key in ("log_prob", "value"):
            value = getattr(self, key)
            if value is not None:
                out[key] = np.asarray(value[i], np.float32)
        return out


class PolicyBase:
    """``step`` and ``reset`` for a stateless policy that implements ``act``."""

    chunk_size: int = 1

    def step(self, obs: Obs, state: Any = None, deterministic: bool = False) -> PolicyStep:
        return PolicyStep(np.asarray(self.act(obs, deterministic=deterministic), np.float32))

    def reset(self, env_ids: Sequence[int] | None = None) -> None:
        return None


@dataclass
class EpisodeLabels:
    """What a reward model returns for one episode of ``T`` transitions.

    ``rewards[t]`` labels the transition ``obs[t] -> obs[t+1]``. ``progress`` and
    ``success`` (length ``T + 1``, one per frame) are filled by models that predict
    them. A failed query is reported with ``ok=False`` and an ``error``: never as
    numbers that look like a label.
    """

    rewards: np.ndarray  # (T,) float32
    progress: np.ndarray | None = None  # (T+1,) float32 in [0, 1]
    success: np.ndarray | None = None  # (T+1,) bool
    ok: bool = True
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def failed(cls, num_steps: int, error: str, **meta: Any) -> "EpisodeLabels":
        return cls(np.full(num_steps, np.nan, np.float32), ok=False, error=error, meta=meta)


class RewardModel(abc.ABC):
    """A reward from frames and an instruction, the same for a live run and a dataset.

    Subclasses set the class attributes and implement :meth:`label_episode`; frame
    models also implement :meth:`score_frames`, which the online loop calls in batches.
    """

    name: str = "reward"
    granularity: Literal["frame", "pair", "episode"] = "frame"
    trainable: bool = False  # has parameters fitted during the run (RL-VLM-F)
    asynchronous: bool = False  # slow (a VLM): labels off the env loop, before sampling
    camera: str | None = None  # which camera's frames it reads; None: the env's first

    def score_frames(self, frames: np.ndarray, instruction: str) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N,) float32 reward of reaching each frame."""
        raise NotImplementedError(f"{type(self).__name__} scores episodes, not single frames")

    def label_episode(self, frames: np.ndarray, instruction: str) -> EpisodeLabels:
        """(T+1, H, W, 3) uint8 frames of one episode -> labels for its T transitions.

        The default, for frame models: the reward of a transition is the score of the
        frame it reaches.
        """
        check_frames(frames)
        scores = self.score_frames(frames[1:], instruction)
        return EpisodeLabels(np.asarray(scores, np.float32))

    def label_episodes(self, episodes: Sequence[tuple[np.ndarray, str]]) -> list[EpisodeLabels]:
        """Label several episodes; backends that batch across episodes override this."""
        return [self.label_episode(f, i) for f, i in episodes]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None


class TrainableReward(RewardModel):
    """A reward fitted during the run from preference labels (RL-VLM-F): ``trainable = True``.

    Online, the labeler calls :meth:`feedback_round` on its replay every
    ``reward.feedback_every`` env steps; offline, ``embodied-label`` calls
    :meth:`fit_on_episodes` once on the dataset's episodes before labeling.
    """

    trainable = True

    @abc.abstractmethod
    def feedback_round(self, replay, num_queries: int) -> dict[str, float]:
        """Sample ``num_queries`` pairs from ``replay``, label them, retrain, relabel the replay."""

    @abc.abstractmethod
    def fit_on_episodes(self, episodes: Sequence[np.ndarray], num_pairs: int, instruction: str,
                        seed: int = 0) -> dict[str, float]:
        """Label ``num_pairs`` frame pairs drawn from two different episodes, fit the reward."""


def check_frames(frames: np.ndarray, what: str = "frames") -> None:
    """One-line errors for images of the wrong shape or type."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3:
        shape = getattr(frames, "shape", type(frames).__name__)
        raise ValueError(f"{what} must be an (N, H, W, 3) uint8 array, got shape {shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 RGB, got dtype {frames.dtype}")


@dataclass
class Batch:
    """A training batch as torch tensors on the learner's device.

    ``reward`` is the (n-step) discounted reward sum and ``discount`` is
    ``gamma**k * (1 - terminated)`` for the ``k`` steps actually summed, so every TD
    target is ``reward + discount * V(next_obs)``; truncation bootstraps.
    ``obs`` / ``next_obs`` hold ``"state"`` (B, D) float32 and ``"pixels"``
    ``{cam: (B, H, W, 3) uint8}``. ``is_offline`` marks rows from demos, interventions
    or datasets (the RLPD half).
    """

    obs: dict[str, Any]
    action: Any
    reward: Any
    discount: Any
    next_obs: dict[str, Any]
    is_offline: Any = None
    intervention: Any = None
    extras: dict = field(default_factory=dict)


class Learner(abc.ABC):
    """Trains from batches; the policy it exports is all an actor needs."""

    device: Any = "cpu"  # torch device of its networks; batches are sampled onto it
    on_policy: bool = False  # True: trained by update_rollout on rollouts of its own policy (PPO)
    discrete_actions: bool = False  # True: also acts in a discrete task's MultiDiscrete space (PPO)

    @property
    def rows_per_update(self) -> int:
        """Replay rows one :meth:`update` call takes (learners with an update-to-data ratio
        above 1 take ``batch_size * utd`` and say so by overriding this)."""
        return int(self.cfg.batch_size)

    def prepare_offline(self, replay) -> None:
        """Called once with the offline replay before training on it (e.g. state statistics)."""
        return None

    @abc.abstractmethod
    def update(self, batch: Batch) -> dict[str, float]:
        """One gradient step (or several, for update-to-data > 1) -> named metrics."""

    @abc.abstractmethod
    def losses(self, batch: Batch) -> dict[str, Any]:
        """The named loss terms ``{"loss/<term>": scalar tensor}`` on ``batch`` (no step taken)."""

    @abc.abstractmethod
    def loss_owners(self) -> dict[str, list]:
        """``{"loss/<term>": [modules or parameters]}``: what each term may move, and nothing else."""

    @abc.abstractmethod
    def policy(self) -> Policy:
        """The acting policy, sharing weights with the learner."""

    def policy_weights(self) -> dict[str, Any]:
        """What ships to a robot: the policy's weights only."""
        return self.policy().state_dict()

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...
