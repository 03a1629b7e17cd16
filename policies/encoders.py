"""Observation encoders for actors and critics: small conv nets for 64-128 px cameras.

Frames arrive as ``(B, H, W, 3)`` uint8 (the replay and the env keep them that way) and
are scaled to [0, 1] inside the encoder. Each camera has its own conv trunk (four 3x3
convs, strides 2-2-2-1, DrQ / RLPD style but cheaper for CPUs); the flattened features
of all cameras are concatenated and projected to ``feature_dim`` with LayerNorm + tanh,
then the proprioceptive ``state`` is appended. Without cameras the encoder passes the
state through unchanged (state-only SAC).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn


class RandomShift(nn.Module):
    """DrQ random shift: pad each image by ``pad`` pixels (edge replicate) and crop back
    to its size at a random offset per image. Works on uint8 ``(B, H, W, C)`` directly:
    edge padding is the same as clamping the source indices, so nothing is padded."""

    def __init__(self, pad: int = 4):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        b, h, w, c = x.shape
        dev = x.device
        shift = torch.randint(0, 2 * self.pad + 1, (b, 2), generator=generator, device=dev) - self.pad
        rows = (torch.arange(h, device=dev) + shift[:, :1]).clamp_(0, h - 1)  # (B, H)
        cols = (torch.arange(w, device=dev) + shift[:, 1:]).clamp_(0, w - 1)  # (B, W)
        src = torch.arange(b, device=dev)[:, None, None] * (h * w) + rows[:, :, None] * w + cols[:, None, :]
        return x.reshape(b * h * w, c).index_select(0, src.view(-1)).view(b, h, w, c)


class ConvTrunk(nn.Module):
    """(B, H, W, 3) uint8 -> (B, F) flattened conv features."""

    def __init__(self, frame_shape: tuple[int, int, int], channels: int = 32, strides=(2, 2, 2, 1)):
        super().__init__()
        if min(frame_shape[:2]) < 32 or frame_shape[-1] != 3:
            raise ValueError(f"camera frames must be (H, W, 3) with H, W >= 32, got {tuple(frame_shape)}")
        layers, c_in = [], frame_shape[-1]
        for stride in strides:
            layers += [nn.Conv2d(c_in, channels, 3, stride=stride), nn.ReLU(inplace=True)]
            c_in = channels
        self.net = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            self.out_dim = self.net(torch.zeros(1, frame_shape[-1], *frame_shape[:2])).shape[1]

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net(frames.permute(0, 3, 1, 2).float() / 255.0)


class ObsEncoder(nn.Module):
    """Observation dict of tensors -> feature vector ``(B, out_dim)``.

    ``cameras`` maps camera name -> ``(H, W, 3)``; ``state_dim`` is the length of the
    proprioceptive vector (0 when absent).
    """

    def __init__(self, state_dim: int = 0, cameras: Mapping[str, tuple] | None = None,
                 feature_dim: int = 50, channels: int = 32):
        super().__init__()
        self.state_dim, self.cameras = int(state_dim), {k: tuple(v) for k, v in (cameras or {}).items()}
        if not self.state_dim and not self.cameras:
            raise ValueError("an observation encoder needs a state vector or at least one camera")
        self.trunks = nn.ModuleDict({cam: ConvTrunk(shape, channels) for cam, shape in self.cameras.items()})
        if self.cameras:
            flat = sum(t.out_dim for t in self.trunks.values())
            self.project = nn.Sequential(nn.Linear(flat, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())
        self.out_dim = (feature_dim if self.cameras else 0) + self.state_dim

    def numpy_to_tensors(self, obs: Mapping[str, Any], device) -> dict[str, Any]:
        """A numpy observation batch -> the tensors :meth:`forward` reads (what a policy's
        ``act`` needs); one-line errors for a missing camera or an unbatched state."""
        tensors: dict[str, Any] = {}
        if self.state_dim:
            state = obs.get("state")
            if state is None or np.ndim(state) != 2:
                raise ValueError(f"act takes a batch: obs['state'] must be (B, D), got shape {np.shape(state)}")
            tensors["state"] = torch.as_tensor(np.asarray(state, np.float32), device=device)
        if self.cameras:
            missing = set(self.cameras) - set(obs.get("pixels", {}))
            if missing:
                raise ValueError(f"obs['pixels'] lacks cameras {sorted(missing)} that this policy reads")
            tensors["pixels"] = {c: torch.as_tensor(np.asarray(obs["pixels"][c]), device=device) for c in self.cameras}
        return tensors

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        if self.cameras:
            pixels = obs["pixels"]
            parts.append(self.project(torch.cat([self.trunks[c](pixels[c]) for c in self.cameras], -1)))
        if self.state_dim:
            parts.append(obs["state"].float())
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)
