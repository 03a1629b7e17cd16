"""The behaviour-cloning policy: normalised observations -> encoder -> MLP -> a chunk of K actions.

What ``learner=bc`` (``embodied/learners/bc.py``) trains on demonstrations and what an actor,
``embodied-eval`` or a residual learner runs as a frozen base. ``spec()`` (JSON) plus
``state_dict()`` rebuild it exactly, normalisation statistics included:

- ``state`` is standardised with the demonstrations' per-dimension mean and std;
- actions are regressed in standardised units (per dimension) and mapped back with the
  demonstrations' mean and std, then clipped to the contract's [-1, 1];
- pixels go through the project's conv encoder (``policies/encoders.py``).

``chunk_size = K``: ``act`` returns ``(B, K, A)`` chunks that the project's chunk
executor plays open loop with one queue per env (``K = 1``: ``(B, A)`` actions).
Deterministic: the same observation gives the same chunk.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from embodied.contracts import Obs, PolicyStep
from policies.encoders import ObsEncoder


class BCPolicy(nn.Module):
    """Implements :class:`embodied.Policy` (chunked when ``chunk > 1``)."""

    kind = "bc"

    def __init__(self, action_dim: int, state_dim: int = 0, cameras: Mapping[str, Any] | None = None,
                 hidden: tuple[int, ...] = (256, 256), chunk: int = 1, feature_dim: int = 50, channels: int = 32):
        super().__init__()
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1 actions per prediction, got {chunk}")
        self.config = {"action_dim": int(action_dim), "state_dim": int(state_dim),
                       "cameras": {k: [int(s) for s in v] for k, v in (cameras or {}).items()},
                       "hidden": [int(h) for h in hidden], "chunk": int(chunk),
                       "feature_dim": int(feature_dim), "channels": int(channels)}
        self.action_dim, self.chunk_size = int(action_dim), int(chunk)
        self.encoder = ObsEncoder(state_dim, cameras, feature_dim, channels)
        sizes = [self.encoder.out_dim, *hidden]
        layers: list[nn.Module] = []
        for d_in, d_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(d_in, d_out), nn.LayerNorm(d_out), nn.ReLU()]
        self.head = nn.Sequential(*layers, nn.Linear(sizes[-1], self.chunk_size * self.action_dim))
        self.register_buffer("state_mean", torch.zeros(int(state_dim)))
        self.register_buffer("state_std", torch.ones(int(state_dim)))
        self.register_buffer("action_mean", torch.zeros(int(action_dim)))
        self.register_buffer("action_std", torch.ones(int(action_dim)))

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, **copy.deepcopy(self.config)}

    @property
    def device(self) -> torch.device:
        return self.state_mean.device

    def set_normalization(self, state: np.ndarray | None, action: np.ndarray) -> None:
        """Statistics of the demonstrations: ``state`` (N, D) (None without one), ``action`` (N, A)."""
        def moments(x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            x = np.asarray(x, np.float64)
            std = x.std(0)
            return (torch.as_tensor(x.mean(0), dtype=torch.float32),
                    torch.as_tensor(np.where(std < 1e-6, 1.0, std), dtype=torch.float32))  # constant dims: 1

        if state is not None and self.encoder.state_dim:
            mean, std = moments(state)
            self.state_mean.copy_(mean)
            self.state_std.copy_(std)
        mean, std = moments(action)
        self.action_mean.copy_(mean)
        self.action_std.copy_(std)

    # -- the network ----------------------------------------------------------------------
    def normalized_chunk(self, obs: Mapping[str, Any]) -> torch.Tensor:
        """Raw observation tensors -> ``(B, K, A)`` actions in standardised units."""
        obs = dict(obs)
        if self.encoder.state_dim:
            obs["state"] = (obs["state"].float() - self.state_mean) / self.state_std
        out = self.head(self.encoder(obs))
        return out.view(out.shape[0], self.chunk_size, self.action_dim)

    def normalize_action(self, action: torch.Tensor) -> torch.Tensor:
        return (action - self.action_mean) / self.action_std

    def unnormalize_action(self, action: torch.Tensor) -> torch.Tensor:
        return (action * self.action_std + self.action_mean).clamp(-1.0, 1.0)

    # -- the Policy contract ---------------------------------------------------------------
    @torch.no_grad()
    def step(self, obs: Obs, state: Any = None, deterministic: bool = True) -> PolicyStep:
        chunk = self.unnormalize_action(self.normalized_chunk(self.encoder.numpy_to_tensors(obs, self.device)))
        action = chunk.cpu().numpy().astype(np.float32, copy=False)
        return PolicyStep(action=action if self.chunk_size > 1 else action[:, 0])

    def act(self, obs: Obs, deterministic: bool = True) -> np.ndarray:
        """Batch of numpy observations -> (B, A) actions, or (B, K, A) chunks when K > 1."""
        return self.step(obs).action

    def reset(self, env_ids=None) -> None:
        return None  # stateless: the chunk executor keeps the queues

