"""The shared parts of the world-model learners: RSSM latent dynamics, a pixel decoder (the
reconstruction objective's, or a detached probe), heads, a tanh-Gaussian actor, and the MLP
ensemble dynamics model of the state tasks (MBPO).

Encoders are the project's own (:class:`policies.encoders.ObsEncoder`: a conv trunk per camera
projected to ``embed`` features, the state appended as is).

**RSSM** (Hafner et al. 2019; RePo's sizes by default: belief 200, stochastic 30, hidden 200).
A latent state is ``(h, z)``: ``h`` the GRU belief, ``z`` a diagonal Gaussian sample. For a
window ``obs[0..L], action[0..L-1]`` (:class:`embodied.replay.SequenceSampler`):
``h_0 = 0``, ``z_0 ~ post(h_0, e_0)``, then ``h_{t+1} = GRU(h_t, [z_t, a_t])``, the prior
``p(z_{t+1} | h_{t+1})`` and the posterior ``q(z_{t+1} | h_{t+1}, e_{t+1})``; step ``t``'s
reward and continuation are predicted from the features ``[h_{t+1}, z_{t+1}]`` of the state it
led to. Standard deviations are ``softplus(.) + min_std`` (0.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from embodied.learners.nets import ensemble_mlp


def mlp(d_in: int, hidden: Sequence[int], d_out: int, act: type[nn.Module] = nn.ELU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(d_in, h), act()]
        d_in = h
    return nn.Sequential(*layers, nn.Linear(d_in, d_out))


@dataclass
class Latent:
    """A batch of latent states (any leading shape): belief ``h``, stochastic ``z`` and the
    Gaussian it was drawn from."""

    h: torch.Tensor
    z: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    @property
    def feat(self) -> torch.Tensor:
        return torch.cat([self.h, self.z], -1)

    def map(self, fn) -> "Latent":
        return Latent(fn(self.h), fn(self.z), fn(self.mean), fn(self.std))

    def detach(self) -> "Latent":
        return self.map(torch.Tensor.detach)


def stack(states: Sequence[Latent], dim: int = 1) -> Latent:
    return Latent(*(torch.stack([getattr(s, k) for s in states], dim) for k in ("h", "z", "mean", "std")))


class RSSM(nn.Module):
    def __init__(self, embed_dim: int, action_dim: int, deter: int = 200, stoch: int = 30, hidden: int = 200,
                 min_std: float = 0.1):
        super().__init__()
        self.deter, self.stoch, self.min_std = int(deter), int(stoch), float(min_std)
        self.inp = nn.Sequential(nn.Linear(stoch + action_dim, hidden), nn.ELU())
        self.gru = nn.GRUCell(hidden, deter)
        self.prior_net = mlp(deter, [hidden], 2 * stoch)
        self.post_net = mlp(deter + embed_dim, [hidden], 2 * stoch)

    @property
    def feat_dim(self) -> int:
        return self.deter + self.stoch

    def _dist(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = out.chunk(2, -1)
        return mean, F.softplus(std) + self.min_std

    def zeros(self, batch: int, device) -> Latent:
        z = torch.zeros(batch, self.stoch, device=device)
        return Latent(torch.zeros(batch, self.deter, device=device), z, z, torch.ones_like(z))

    def transition(self, state: Latent, action: torch.Tensor) -> torch.Tensor:
        """The next belief ``h_{t+1} = GRU(h_t, [z_t, a_t])``."""
        return self.gru(self.inp(torch.cat([state.z, action], -1)), state.h)

    def prior(self, h: torch.Tensor, sample: bool = True) -> Latent:
        mean, std = self._dist(self.prior_net(h))
        return Latent(h, mean + std * torch.randn_like(std) if sample else mean, mean, std)

    def posterior(self, h: torch.Tensor, embed: torch.Tensor, sample: bool = True) -> Latent:
        mean, std = self._dist(self.post_net(torch.cat([h, embed], -1)))
        return Latent(h, mean + std * torch.randn_like(std) if sample else mean, mean, std)

    def observe(self, embed: torch.Tensor, action: torch.Tensor) -> tuple[Latent, Latent]:
        """``embed`` (B, L + 1, E), ``action`` (B, L, A) -> posteriors (B, L + 1) and priors
        (B, L) (prior ``t`` is of step ``t + 1``)."""
        b = embed.shape[0]
        post = self.posterior(torch.zeros(b, self.deter, device=embed.device), embed[:, 0])
        posts, priors = [post], []
        for t in range(action.shape[1]):
            h = self.transition(post, action[:, t])
            priors.append(self.prior(h))
            post = self.posterior(h, embed[:, t + 1])
            posts.append(post)
        return stack(posts), stack(priors)

    def step(self, state: Latent, action: torch.Tensor, embed: torch.Tensor, first: torch.Tensor,
             sample: bool = True) -> Latent:
        """One filtering step while acting: ``first`` rows start over (``h = 0``, no transition)."""
        h = self.transition(state, action)
        h = torch.where(first[:, None], torch.zeros_like(h), h)
        return self.posterior(h, embed, sample)


class ConvDecoder(nn.Module):
    """Latent features -> ``(B, H, W, 3)`` frames in [-0.5, 0.5] for each camera: transposed convs
    doubling a 4 x 4 map until it reaches the frame's size (3 for 32 px, 4 for 64 px), a bilinear
    resize for sizes that are not 4 * 2^k."""

    def __init__(self, feat_dim: int, cameras: Mapping[str, tuple], depth: int = 32):
        super().__init__()
        self.cameras = {k: tuple(v) for k, v in cameras.items()}
        self.depth = int(depth)
        self.fc = nn.Linear(feat_dim, 8 * depth * 16)
        self.nets = nn.ModuleDict({cam: self._upsampler(max(h, w)) for cam, (h, w, _) in self.cameras.items()})

    def _upsampler(self, size: int) -> nn.Sequential:
        layers, width, side = [], 8 * self.depth, 4
        while side * 2 < size:
            layers += [nn.ConvTranspose2d(width, max(width // 2, self.depth), 4, 2, 1), nn.ELU()]
            width, side = max(width // 2, self.depth), side * 2
        return nn.Sequential(*layers, nn.ConvTranspose2d(width, 3, 4, 2, 1))

    def forward(self, feat: torch.Tensor) -> dict[str, torch.Tensor]:
        lead = feat.shape[:-1]
        x = self.fc(feat.reshape(-1, feat.shape[-1])).view(-1, 8 * self.depth, 4, 4)
        out = {}
        for cam, (h, w, _) in self.cameras.items():
            img = self.nets[cam](x)
            if img.shape[-2:] != (h, w):
                img = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False)
            out[cam] = img.permute(0, 2, 3, 1).reshape(*lead, h, w, 3)
        return out


def frames_target(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames -> the decoder's target range [-0.5, 0.5]."""
    return frames.float() / 255.0 - 0.5


class TanhActor(nn.Module):
    """Latent features -> a tanh-squashed Gaussian over actions (Dreamer's continuous actor:
    mean ``5 tanh(m / 5)``, std ``softplus(s) + 1e-4``)."""

    def __init__(self, feat_dim: int, action_dim: int, hidden: Sequence[int] = (400, 400, 400, 400)):
        super().__init__()
        self.net = mlp(feat_dim, hidden, 2 * action_dim)

    def forward(self, feat: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (action in [-1, 1], log-probability of that action), reparameterised."""
        mean, std = self.net(feat).chunk(2, -1)
        mean, std = 5.0 * torch.tanh(mean / 5.0), F.softplus(std) + 1e-4
        u = mean if deterministic else mean + std * torch.randn_like(std)
        logp = (-0.5 * ((u - mean) / std) ** 2 - std.log() - 0.9189385332046727).sum(-1)
        logp = logp - (2.0 * (0.6931471805599453 - u - F.softplus(-2.0 * u))).sum(-1)  # tanh's log-det
        return torch.tanh(u), logp


class EnsembleDynamics(nn.Module):
    """``E`` MLPs predicting ``(delta state, reward, continuation logit)`` from ``(state, action)``,
    with a Gaussian head (mean, log-variance bounded as in MBPO) over delta state and reward.
    Inputs are standardised with statistics set by :meth:`set_normaliser`."""

    def __init__(self, state_dim: int, action_dim: int, members: int = 7, hidden: Sequence[int] = (200,) * 4):
        super().__init__()
        self.state_dim, self.members = int(state_dim), int(members)
        out = state_dim + 1
        self.out = out
        self.net = ensemble_mlp(members, [state_dim + action_dim, *hidden, 2 * out + 1], activation=nn.SiLU)
        self.max_logvar = nn.Parameter(torch.full((out,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((out,), -10.0))
        self.register_buffer("mu", torch.zeros(state_dim + action_dim))
        self.register_buffer("sigma", torch.ones(state_dim + action_dim))

    def set_normaliser(self, inputs: torch.Tensor) -> None:
        self.mu.copy_(inputs.mean(0))
        self.sigma.copy_(inputs.std(0).clamp_min(1e-6))

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(E, B, .)`` or ``(B, .)`` inputs -> mean ``(E, B, D + 1)``, log-variance, continuation logit ``(E, B)``."""
        x = (torch.cat([state, action], -1) - self.mu) / self.sigma
        if x.ndim == 2:
            x = x.expand(self.members, *x.shape)
        y = self.net(x)
        mean, logvar, cont = y[..., : self.out], y[..., self.out: 2 * self.out], y[..., -1]
        logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar, cont
