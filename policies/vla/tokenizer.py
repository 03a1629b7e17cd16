"""Action tokens: one token per action dimension over ``bins`` values.

``bins`` N gives N tokens ``0 .. N-1`` whose centres are ``linspace(-1, 1, N)``: both ends
are centres, the spacing is ``2 / (N - 1)``, and token ``k`` decodes to ``-1 + 2k / (N - 1)``.
(OpenVLA's "256 bins" are 256 edges and so 255 centres; here N bins are N centres.)
Encoding rounds to the nearest centre after clipping to [-1, 1], so every centre encodes to
its own token and an out-of-range action becomes the end token. Actions in other units are
mapped onto [-1, 1] first by the policy's stored ``low`` / ``high`` (the demonstrations'
1st / 99th percentiles, or the contract's [-1, 1]).
"""

from __future__ import annotations

import torch


class ActionTokenizer:
    def __init__(self, bins: int = 256):
        if int(bins) < 2:
            raise ValueError(f"action tokens need bins >= 2 values per dimension, got {bins}")
        self.bins = int(bins)

    def centres(self, device=None) -> torch.Tensor:
        return torch.linspace(-1.0, 1.0, self.bins, device=device)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Values in [-1, 1] (clipped first) -> the nearest centre's token id (long)."""
        return ((x.clamp(-1.0, 1.0) + 1.0) * 0.5 * (self.bins - 1)).round().long()

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids -> their centres."""
        return tokens.float() * (2.0 / (self.bins - 1)) - 1.0
