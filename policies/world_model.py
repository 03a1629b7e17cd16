"""The acting half of a latent world-model learner: encoder + RSSM filter + actor.

Per env it keeps the filtered latent state and the previous action (:class:`FilterState`,
returned as the policy step's ``state`` and passed back by the chunk executor; reset at every
episode boundary): each step encodes the observation, advances the belief with the previous
action (a fresh episode starts from ``h = 0``) and acts from the posterior's features, as the
learner's RSSM filters a training window.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from embodied.contracts import Obs, PolicyStep
from embodied.world_models.nets import RSSM, Latent, TanhActor
from policies.encoders import ObsEncoder


class FilterState:
    """Per-env latent state, previous action and "starts afresh" flags of a :class:`LatentPolicy`."""

    def __init__(self, latent: Latent, action: torch.Tensor):
        self.latent, self.action = latent, action
        self.first = torch.ones(action.shape[0], dtype=torch.bool, device=action.device)

    def reset(self, env_ids=None) -> None:
        if env_ids is None:
            self.first[:] = True
        else:
            self.first[list(env_ids)] = True


class LatentPolicy(nn.Module):
    kind = "world_model_actor"
    chunk_size = 1

    def __init__(self, action_dim: int, state_dim: int = 0, cameras: Mapping[str, Sequence[int]] | None = None,
                 embed: int = 256, depth: int = 32, deter: int = 200, stoch: int = 30, hidden: int = 200,
                 actor_hidden: Sequence[int] = (400, 400, 400, 400), min_std: float = 0.1):
        super().__init__()
        cams = {k: tuple(int(s) for s in v) for k, v in (cameras or {}).items()}
        self.config = {"action_dim": int(action_dim), "state_dim": int(state_dim),
                       "cameras": {k: list(v) for k, v in cams.items()}, "embed": int(embed), "depth": int(depth),
                       "deter": int(deter), "stoch": int(stoch), "hidden": int(hidden),
                       "actor_hidden": [int(h) for h in actor_hidden], "min_std": float(min_std)}
        self.encoder = ObsEncoder(state_dim, cams, embed, depth)
        self.rssm = RSSM(self.encoder.out_dim, action_dim, deter, stoch, hidden, min_std)
        self.actor = TanhActor(self.rssm.feat_dim, action_dim, actor_hidden)
        self.action_dim = int(action_dim)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.config}

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def step(self, obs: Obs, state: FilterState | None = None, deterministic: bool = False) -> PolicyStep:
        embed = self.encoder(self.encoder.numpy_to_tensors(obs, self.device))
        n = embed.shape[0]
        if state is None or state.action.shape[0] != n:
            state = FilterState(self.rssm.zeros(n, self.device), torch.zeros(n, self.action_dim, device=self.device))
        post = self.rssm.step(state.latent, state.action, embed, state.first, sample=not deterministic)
        action, _ = self.actor(post.feat, deterministic)
        state.latent, state.action = post, action
        state.first = torch.zeros_like(state.first)
        return PolicyStep(action.cpu().numpy().astype(np.float32), state=state)

    def act(self, obs: Obs, deterministic: bool = False) -> np.ndarray:
        return self.step(obs, deterministic=deterministic).action

    def reset(self, env_ids=None) -> None:
        return None  # the per-env state is the FilterState the executor holds (it resets it)
