"""Networks the learners share: batched ensembles of MLPs (one matmul for all members)."""

from __future__ import annotations

import math

import torch
from torch import nn


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


def ensemble_mlp(members: int, sizes: list[int], layer_norm: bool = False) -> nn.Sequential:
    """``members`` MLPs as one module: (E, B, sizes[0]) -> (E, B, sizes[-1]); Linear-(LayerNorm)-ReLU
    hidden layers, a linear last layer (the same layout as :func:`policies.actor.mlp`)."""
    layers: list[nn.Module] = []
    for d_in, d_out in zip(sizes[:-2], sizes[1:-1]):
        layers.append(EnsembleLinear(members, d_in, d_out))
        layers += [EnsembleLayerNorm(members, d_out)] if layer_norm else []
        layers.append(nn.ReLU())
    return nn.Sequential(*layers, EnsembleLinear(members, sizes[-2], sizes[-1]))
