"""Networks the learners share: batched ensembles of MLPs (one matmul for all members)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn


def tree_map(fn, x: Any) -> Any:
    """``fn`` on every array / tensor of a nested dict (lists of str pass through)."""
    if isinstance(x, Mapping):
        return {k: tree_map(fn, v) for k, v in x.items()}
    return fn(x) if isinstance(x, (np.ndarray, torch.Tensor)) else x


class EnsembleLinear(nn.Module):
    """``E`` independent linear layers applied as one batched matmul: (E, B, i) -> (E, B, o)."""

    def __init__(self, members: int, d_in: int, d_out: int):
        super().__init__()
        bound = 1 / math.sqrt(d_in)  # torch.nn.Linear's default init, per member
        self.weight = nn.Parameter(torch.empty(members, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, d_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleLayerNorm(nn.Module):
    """LayerNorm with separate affine parameters per ensemble member."""

    def __init__(self, members: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(members, 1, dim))
        self.bias = nn.Parameter(torch.zeros(members, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias, nn.functional.layer_norm(x, x.shape[-1:]), self.weight)


def ensemble_mlp(members: int, sizes: list[int], layer_norm: bool = False,
                 activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """``members`` MLPs as one module: (E, B, sizes[0]) -> (E, B, sizes[-1]); Linear-(LayerNorm)-ReLU
    hidden layers (or another ``activation``), a linear last layer (the layout of :func:`policies.actor.mlp`)."""
    layers: list[nn.Module] = []
    for d_in, d_out in zip(sizes[:-2], sizes[1:-1]):
        layers.append(EnsembleLinear(members, d_in, d_out))
        layers += [EnsembleLayerNorm(members, d_out)] if layer_norm else []
        layers.append(activation())
    return nn.Sequential(*layers, EnsembleLinear(members, sizes[-2], sizes[-1]))


class FlatAdam:
    """Adam with global-norm gradient clipping over one flat buffer of many parameters.

    Every parameter (and its gradient) becomes a view into one contiguous tensor, so zeroing,
    clipping and the Adam step are a few ops on one tensor instead of a loop over each
    parameter: on a CPU, small networks (PPO's 64x64 MLPs) spend more time there than in
    their matmuls. The parameters stay the modules' own (state_dict, load_state_dict work as
    before); :meth:`step` re-links the gradient views, so a ``p.grad = None`` elsewhere is harmless.
    """

    def __init__(self, params, lr: float, eps: float = 1e-8, max_grad_norm: float | None = None):
        self.params = [p for p in params if p.requires_grad]
        sizes = [p.numel() for p in self.params]
        with torch.no_grad():
            self.flat = torch.cat([p.detach().reshape(-1) for p in self.params])
        for p, view in zip(self.params, self.flat.split(sizes)):
            p.data = view.view_as(p)
        self.flat.grad = torch.zeros_like(self.flat)
        self._grads = [g.view_as(p) for p, g in zip(self.params, self.flat.grad.split(sizes))]
        self.max_grad_norm = max_grad_norm
        self.adam = torch.optim.Adam([self.flat], lr=lr, eps=eps, fused=True)

    def set_lr(self, lr: float) -> None:
        self.adam.param_groups[0]["lr"] = lr

    def step(self, loss: torch.Tensor) -> torch.Tensor:
        """zero -> backward -> clip to ``max_grad_norm`` -> Adam; returns the gradient norm before clipping."""
        grad = self.flat.grad
        grad.zero_()
        for p, g in zip(self.params, self._grads):
            p.grad = g
        loss.backward()
        norm = grad.norm()
        if self.max_grad_norm is not None:
            grad.mul_((self.max_grad_norm / (norm + 1e-6)).clamp(max=1.0))  # torch's clip_grad_norm_
        self.adam.step()
        return norm

    def state_dict(self) -> dict:
        return self.adam.state_dict()

    def load_state_dict(self, state) -> None:
        self.adam.load_state_dict(state)
