"""HL-Gauss classification critics (Farebrother et al. 2024, "Stop Regressing").

A critic outputs logits over ``num_bins`` fixed bins that tile ``[v_min, v_max]``; its value
is the expectation of the bin centres under the softmax. A scalar TD target ``y`` becomes a
distribution: a Gaussian of mean ``clip(y, v_min, v_max)`` and std ``sigma = sigma_ratio *
bin width`` (0.75 bin widths, the paper's choice) integrated over each bin,

    p_i = (Phi((e_{i+1} - y) / sigma) - Phi((e_i - y) / sigma)) / (Phi((e_N - y) / sigma) - Phi((e_0 - y) / sigma))

(``e`` the N + 1 bin edges, ``Phi`` the normal CDF; the renormalisation puts the mass that
falls outside the range back inside), and the critic minimises the cross-entropy
``-sum_i p_i log softmax(logits)_i``. Choose ``[v_min, v_max]`` to cover the returns the
task can reach (for a reward in [0, 1] and discount 0.99: [0, 100]).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class HLGauss(nn.Module):
    """Bins over ``[v_min, v_max]``: targets, loss and value of a classification critic."""

    def __init__(self, v_min: float, v_max: float, num_bins: int = 51, sigma_ratio: float = 0.75):
        super().__init__()
        if not v_max > v_min:
            raise ValueError(f"the HL-Gauss value range needs v_max > v_min, got [{v_min}, {v_max}]")
        if num_bins < 2 or sigma_ratio <= 0:
            raise ValueError(f"HL-Gauss needs num_bins >= 2 and sigma_ratio > 0, got {num_bins}, {sigma_ratio}")
        self.v_min, self.v_max, self.num_bins = float(v_min), float(v_max), int(num_bins)
        edges = torch.linspace(self.v_min, self.v_max, self.num_bins + 1)
        self.register_buffer("edges", edges)
        self.register_buffer("centres", (edges[:-1] + edges[1:]) / 2)
        self.sigma = float(sigma_ratio) * (self.v_max - self.v_min) / self.num_bins

    def target_probs(self, y: torch.Tensor) -> torch.Tensor:
        """``(...)`` scalar targets -> ``(..., num_bins)`` probabilities (each row sums to 1)."""
        y = y.clamp(self.v_min, self.v_max).unsqueeze(-1)
        cdf = torch.special.erf((self.edges - y) / (self.sigma * math.sqrt(2.0)))  # 2 * Phi - 1
        mass = cdf[..., 1:] - cdf[..., :-1]
        return mass / (cdf[..., -1:] - cdf[..., :1])

    def value(self, logits: torch.Tensor) -> torch.Tensor:
        """``(..., num_bins)`` logits -> ``(...)`` expected value over the bin centres."""
        return logits.softmax(-1) @ self.centres

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(...)`` cross-entropy of ``logits`` against the HL-Gauss distribution of ``y``."""
        return -(self.target_probs(y.detach()) * logits.log_softmax(-1)).sum(-1)
