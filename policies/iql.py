"""The IQL actor: state normaliser + observation encoder + Gaussian-mean head.

IQL (embodied/learners/iql.py) trains it by advantage-weighted regression; a robot runs it
from its JSON ``spec()`` plus weights (``policies.from_spec``), the dataset's state
statistics included.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from embodied.contracts import Obs, PolicyBase
from policies.actor import mlp
from policies.encoders import ObsEncoder


class IQLPolicy(PolicyBase, nn.Module):
    """State normaliser + observation encoder + actor head: all an actor runs.

    The mean is ``tanh(MLP)``; the Gaussian's std is state-independent and the log-
    probability is taken of the dataset's actions directly (no tanh correction), as
    in CORL. ``act`` returns the mean (deterministic) or a clipped sample.
    """

    chunk_size = 1
    kind = "iql_actor"

    def __init__(self, action_dim: int, state_dim: int = 0, cameras: Mapping[str, Any] | None = None,
                 hidden: tuple[int, ...] = (256, 256), feature_dim: int = 50, channels: int = 32,
                 deterministic: bool = False):
        super().__init__()
        self.config = {"action_dim": int(action_dim), "state_dim": int(state_dim),
                       "cameras": {k: [int(s) for s in v] for k, v in (cameras or {}).items()},
                       "hidden": [int(h) for h in hidden], "feature_dim": int(feature_dim),
                       "channels": int(channels), "deterministic": bool(deterministic)}
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))
        self.encoder = ObsEncoder(state_dim, cameras, feature_dim, channels)
        self.net = mlp([self.encoder.out_dim, *hidden, action_dim])
        self.log_std = None if deterministic else nn.Parameter(torch.zeros(action_dim))

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, **copy.deepcopy(self.config)}

    def normalize(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(obs)
        if self.encoder.state_dim:
            out["state"] = (obs["state"].float() - self.state_mean) / self.state_std
        return out

    def dist_params(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        mean = torch.tanh(self.net(feats))
        std = None if self.log_std is None else self.log_std.clamp(-20.0, 2.0).exp().expand_as(mean)
        return mean, std

    @torch.no_grad()
    def act(self, obs: Obs, deterministic: bool = False) -> np.ndarray:
        """Batch of numpy observations -> (B, A) float32 actions in [-1, 1]."""
        tensors = self.encoder.numpy_to_tensors(obs, self.state_mean.device)
        mean, std = self.dist_params(self.encoder(self.normalize(tensors)))
        if not (deterministic or std is None):
            mean = mean + std * torch.randn_like(mean)
        return mean.clamp(-1.0, 1.0).cpu().numpy().astype(np.float32)
