"""Tanh-squashed Gaussian actor: the network SAC trains and a robot runs.

The actor owns (or shares with the critic) its observation encoder, so its
``state_dict()`` alone is enough to act, and ``spec()`` is the JSON needed to rebuild
it on a remote actor with :func:`policies.from_spec`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from embodied.contracts import PolicyBase
from policies.encoders import ObsEncoder


def mlp(sizes: list[int], layer_norm: bool = False) -> nn.Sequential:
    """Linear-(LayerNorm)-ReLU stack; the last layer is linear."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers += [nn.LayerNorm(sizes[i + 1])] if layer_norm else []
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class GaussianActor(PolicyBase, nn.Module):
    """``a = tanh(mean + std * eps)``; ``log_std`` squashed smoothly into
    ``[log_std_min, log_std_max]``. Implements :class:`embodied.Policy`."""

    chunk_size = 1
    kind = "gaussian_actor"

    def __init__(self, action_dim: int, state_dim: int = 0, cameras: Mapping[str, Any] | None = None,
                 hidden: tuple[int, ...] = (256, 256), feature_dim: int = 50, channels: int = 32,
                 log_std_min: float = -5.0, log_std_max: float = 2.0):
        super().__init__()
        self.config = {"action_dim": int(action_dim), "state_dim": int(state_dim),
                       "cameras": {k: [int(s) for s in v] for k, v in (cameras or {}).items()},
                       "hidden": [int(h) for h in hidden], "feature_dim": int(feature_dim),
                       "channels": int(channels), "log_std_min": float(log_std_min),
                       "log_std_max": float(log_std_max)}
        self.encoder = ObsEncoder(state_dim, cameras, feature_dim, channels)
        self.net = mlp([self.encoder.out_dim, *hidden, 2 * action_dim])
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.config}

    def forward(self, features: torch.Tensor, deterministic: bool = False,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoded features -> (action in [-1, 1], log-probability of that action)."""
        mean, log_std = self.net(features).chunk(2, dim=-1)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(log_std) + 1)
        if deterministic:
            u = mean
            eps = torch.zeros_like(mean)
        else:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            u = mean + log_std.exp() * eps
        # log N(u; mean, std) minus log|d tanh(u)/du| = 2 (log 2 - u - softplus(-2u)), stable form
        log_prob = (-0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - (2 * (math.log(2) - u - nn.functional.softplus(-2 * u))).sum(-1)
        return torch.tanh(u), log_prob

    @torch.no_grad()
    def act(self, obs: Mapping[str, Any], deterministic: bool = False) -> np.ndarray:
        """Batch of numpy observations -> (B, A) float32 actions in [-1, 1]."""
        tensors = self.encoder.numpy_to_tensors(obs, next(self.parameters()).device)
        action, _ = self(self.encoder(tensors), deterministic=deterministic)
        return action.cpu().numpy().astype(np.float32)
