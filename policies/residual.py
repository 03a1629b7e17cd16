"""Base + residual: a frozen base policy acts, a small network corrects each of its actions.

    base_action = the base's next action (its chunks played open loop, a queue per env)
    residual    = tanh(MLP([encoder(obs with standardised state), base_action])) * scale
    action      = clip(base_action + residual, -1, 1)          (+ exploration noise when sampling)

The residual MLP's last layer starts at exactly zero, so before any update the policy
plays the base's actions bit for bit. ``scale`` bounds the correction (0.1 of the
normalised [-1, 1] range by default; ResFiT's runs use 0.2).

The base's action queues are per-env *state* (:class:`BaseQueues`), held by whichever
chunk executor runs this policy (training, evaluation, a robot actor) and cleared for an
env at each of its episode boundaries; so evaluating mid-training never disturbs the
training envs' queues. ``state_dict()`` holds the residual only (what streams to a
robot); ``spec()`` names the base by its path or hub id, which the robot computer loads
from its own disk once (``base_policy=`` on ``embodied-actor`` overrides the path).
Each step reports ``extras["base_action"]``, which the replay stores and the learner reads.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from embodied.contracts import Obs, PolicyStep
from policies.actor import mlp
from policies.chunking import ChunkExecutor
from policies.encoders import ObsEncoder


class BaseQueues:
    """The base policy's chunk queues for ``num_envs`` envs (a policy step's per-env state)."""

    def __init__(self, base, num_envs: int, execute: int | None = None, executor: ChunkExecutor | None = None):
        self.num_envs = int(num_envs)  # ``executor``: continue an existing one (a robot actor's base queue)
        self.executor = executor or ChunkExecutor(base, num_envs, execute=execute, deterministic=True)

    def __call__(self, obs: Obs) -> np.ndarray:
        return np.asarray(self.executor(obs).action, np.float32)

    def reset(self, env_ids: Sequence[int] | None = None) -> None:
        self.executor.reset(env_ids)


class ResidualActor(nn.Module):
    """(features, base action) -> residual in [-scale, scale]; last layer zero at init."""

    def __init__(self, feature_dim: int, action_dim: int, hidden: Sequence[int], scale: float):
        super().__init__()
        self.scale = float(scale)
        self.net = mlp([feature_dim + action_dim, *hidden, action_dim], layer_norm=True)
        last = self.net[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, features: torch.Tensor, base_action: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(torch.cat([features, base_action], -1))) * self.scale


class ResidualPolicy(nn.Module):
    """A frozen base plus a trained residual; implements :class:`embodied.Policy`."""

    kind = "residual"
    chunk_size = 1  # the residual corrects every step; the base's chunks live in BaseQueues

    def __init__(self, base_policy: str, action_dim: int, state_dim: int = 0,
                 cameras: Mapping[str, Any] | None = None, hidden: Sequence[int] = (256, 256),
                 scale: float = 0.1, explore_std: float = 0.05, feature_dim: int = 50, channels: int = 32,
                 base_execute: int | None = None, base=None):
        super().__init__()
        if scale <= 0:
            raise ValueError(f"residual scale must be > 0, got {scale}")
        self.config = {"base_policy": str(base_policy), "action_dim": int(action_dim), "state_dim": int(state_dim),
                       "cameras": {k: [int(s) for s in v] for k, v in (cameras or {}).items()},
                       "hidden": [int(h) for h in hidden], "scale": float(scale), "explore_std": float(explore_std),
                       "feature_dim": int(feature_dim), "channels": int(channels),
                       "base_execute": None if base_execute is None else int(base_execute)}
        if base is None:
            from policies.base import load_base

            base = load_base(base_policy)
        self._base = [base]  # a list: the base's weights stay out of this module's state_dict
        base_chunk = int(getattr(base, "chunk_size", 1))
        if base_execute is not None and not 1 <= base_execute <= base_chunk:
            raise ValueError(f"learner.base_execute={base_execute} cannot be honoured: the base predicts chunks of "
                             f"{base_chunk}; choose 1..{base_chunk} or null (the whole chunk)")
        self.explore_std = float(explore_std)
        self.rng = np.random.default_rng(0)  # exploration noise; the learner reseeds it from its seed
        self.encoder = ObsEncoder(state_dim, cameras, feature_dim, channels)
        self.actor = ResidualActor(self.encoder.out_dim, int(action_dim), hidden, scale)
        self.register_buffer("state_mean", torch.zeros(int(state_dim)))
        self.register_buffer("state_std", torch.ones(int(state_dim)))

    @property
    def base(self):
        return self._base[0]

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, **copy.deepcopy(self.config)}

    @property
    def device(self) -> torch.device:
        return self.state_mean.device

    def set_state_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.state_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.state_std.copy_(torch.as_tensor(np.where(np.asarray(std) < 1e-6, 1.0, std), dtype=torch.float32))

    # -- the network (tensors) -------------------------------------------------------------
    def features(self, obs: Mapping[str, Any]) -> torch.Tensor:
        """Observation tensors -> encoder features (state standardised first)."""
        obs = {k: v for k, v in obs.items() if k in ("state", "pixels")}
        if self.encoder.state_dim:
            obs["state"] = (obs["state"].float() - self.state_mean) / self.state_std
        return self.encoder(obs)

    @staticmethod
    def execute(base_action: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return (base_action + residual).clamp(-1.0, 1.0)

    # -- the Policy contract ---------------------------------------------------------------
    def new_state(self, num_envs: int) -> BaseQueues:
        return BaseQueues(self.base, num_envs, self.config["base_execute"])

    def base_actions(self, obs: Obs, state: BaseQueues | None) -> tuple[np.ndarray, BaseQueues]:
        n = len(next(iter(_leaves(obs))))
        if state is None or state.num_envs != n:
            state = self.new_state(n)
        return state(obs), state

    @torch.no_grad()
    def step(self, obs: Obs, state: Any = None, deterministic: bool = False,
             uniform_noise: float | None = None, generator: np.random.Generator | None = None) -> PolicyStep:
        """One step: ``clip(base + residual (+ noise))``. ``uniform_noise=w`` plays the
        warm-up instead: ``clip(base + U(-w, w))``, the residual unused."""
        base, state = self.base_actions(obs, state)
        rng = generator or self.rng
        if uniform_noise is not None:
            action = np.clip(base + rng.uniform(-uniform_noise, uniform_noise, base.shape), -1, 1)
        else:
            tensors = self.encoder.numpy_to_tensors(obs, self.device)
            b = torch.as_tensor(base, device=self.device)
            action = self.execute(b, self.actor(self.features(tensors), b)).cpu().numpy()
            if not deterministic and self.explore_std > 0:
                action = np.clip(action + rng.normal(0.0, self.explore_std, action.shape), -1, 1)
        return PolicyStep(action.astype(np.float32), extras={"base_action": base}, state=state)

    def act(self, obs: Obs, deterministic: bool = True) -> np.ndarray:
        """(B, A) actions of one step with fresh base queues (a loop keeps them via ``step``)."""
        return self.step(obs, None, deterministic=deterministic).action

    def reset(self, env_ids=None) -> None:
        return None  # per-env state lives in BaseQueues, reset by the chunk executor


class WarmupPolicy:
    """What acts during residual RL's warm-up: the base plus uniform noise ``U(-noise, noise)``."""

    chunk_size = 1

    def __init__(self, policy: ResidualPolicy, noise: float, seed: int = 0):
        self.policy, self.noise = policy, float(noise)
        self.rng = np.random.default_rng(seed)

    def step(self, obs: Obs, state: Any = None, deterministic: bool = False) -> PolicyStep:
        return self.policy.step(obs, state, uniform_noise=self.noise, generator=self.rng)

    def reset(self, env_ids=None) -> None:
        return None


def _leaves(obs: Mapping[str, Any]):
    for value in obs.values():
        if isinstance(value, Mapping):
            yield from _leaves(value)
        else:
            yield value
