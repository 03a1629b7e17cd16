"""The PPO actor-critic: state normaliser + observation encoder + action head + value head.

What PPO (``embodied/learners/ppo.py``) trains and what an actor runs: ``spec()`` (JSON)
plus ``state_dict()`` rebuild it exactly, the running observation statistics included, so
``embodied-eval`` and a robot actor normalise states the way training did.

Action heads (actions are the contract's [-1, 1] box):

``gaussian``     a diagonal Gaussian over an UNBOUNDED sample ``u`` (CleanRL / SB3): the
                 std is a free parameter per dimension (``state_dependent_std=False``) or a
                 second output of the actor MLP. The env gets ``clip(u, -1, 1)``; the
                 sample ``u`` itself goes in ``extras["raw_action"]`` and ``log_prob`` is
                 ``log N(u)``, so the learner rescores exactly what was sampled.
``categorical``  one categorical per action dimension over ``bins`` values
                 ``linspace(-1, 1, bins)`` (N bins are N centres, both ends included):
                 VLA-style action tokens. The token ids go in ``extras["tokens"]``.
                 With ``nvec`` (a discrete task's ``MultiDiscrete`` sizes) dimension ``d``
                 chooses among ``nvec[d]`` values and the token id IS the action.

The value head is part of the policy, so every ``step`` reports ``V(s)`` with the
log-probability (the bridge carries both as extras); it is a small MLP on the same
features. ``deterministic=True`` acts with the mean (Gaussian) or the mode (categorical).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from embodied.contracts import Obs, PolicyStep
from policies.encoders import ObsEncoder

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class RunningMeanStd(nn.Module):
    """Running mean / variance over batches (Chan et al.'s parallel update), as buffers."""

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(float(epsilon), dtype=torch.float64))
        self._version, self._affine_key = 0, None  # bumped by update / load: the float32 affine is cached

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._version += 1

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 (mean, 1 / sqrt(var + 1e-8)), recomputed only when the statistics changed."""
        key = (self._version, self.mean.device)
        if self._affine_key != key:
            self._affine = (self.mean.float(), (self.var + 1e-8).rsqrt().float())
            self._affine_key = key
        return self._affine

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold the rows of ``x`` (``(B, *shape)``) into the statistics."""
        x = x.detach().to(self.mean.device, torch.float64).reshape(-1, *self.mean.shape)
        n = x.shape[0]
        if n == 0:
            return
        mean, var = x.mean(0), x.var(0, unbiased=False)
        delta, total = mean - self.mean, self.count + n
        m2 = self.var * self.count + var * n + delta.pow(2) * self.count * n / total
        self.mean += delta * n / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)
        self._version += 1


def _layer(d_in: int, d_out: int, gain: float) -> nn.Linear:
    """Orthogonal weights with ``gain``, zero bias (CleanRL's ``layer_init``)."""
    layer = nn.Linear(d_in, d_out)
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def tanh_mlp(sizes: list[int], out_gain: float) -> nn.Sequential:
    """Linear-Tanh hidden layers (gain sqrt 2), a linear last layer with ``out_gain``."""
    layers: list[nn.Module] = []
    for d_in, d_out in zip(sizes[:-2], sizes[1:-1]):
        layers += [_layer(d_in, d_out, math.sqrt(2)), nn.Tanh()]
    return nn.Sequential(*layers, _layer(sizes[-2], sizes[-1], out_gain))


class PPOPolicy(nn.Module):
    """Implements :class:`embodied.Policy`; ``value(obs)`` gives V(s) for bootstrapping."""

    chunk_size = 1
    kind = "ppo_actor_critic"

    def __init__(self, action_dim: int, state_dim: int = 0, cameras: Mapping[str, Any] | None = None,
                 hidden: tuple[int, ...] = (64, 64), head: str = "gaussian", bins: int = 256,
                 state_dependent_std: bool = False, init_log_std: float = 0.0,
                 normalize_obs: bool = True, clip_obs: float = 10.0, feature_dim: int = 50, channels: int = 32,
                 nvec: list[int] | None = None):
        super().__init__()
        if head not in ("gaussian", "categorical"):
            raise ValueError(f"head must be gaussian or categorical, got {head!r}")
        if nvec is not None:
            if head != "categorical" or len(nvec) != action_dim or min(nvec) < 1:
                raise ValueError(f"discrete actions {list(nvec)} need the categorical head with one size >= 1 per "
                                 f"action dimension ({action_dim})")
            bins = max(2, max(int(n) for n in nvec))
        if head == "categorical" and bins < 2:
            raise ValueError(f"a categorical head needs bins >= 2 values per action dimension, got {bins}")
        self.config = {"action_dim": int(action_dim), "state_dim": int(state_dim),
                       "cameras": {k: [int(s) for s in v] for k, v in (cameras or {}).items()},
                       "hidden": [int(h) for h in hidden], "head": head, "bins": int(bins),
                       "state_dependent_std": bool(state_dependent_std), "init_log_std": float(init_log_std),
                       "normalize_obs": bool(normalize_obs), "clip_obs": float(clip_obs),
                       "feature_dim": int(feature_dim), "channels": int(channels),
                       "nvec": None if nvec is None else [int(n) for n in nvec]}
        self.action_dim, self.head, self.bins = int(action_dim), head, int(bins)
        self.clip_obs, self.normalize_obs = float(clip_obs), bool(normalize_obs)
        self.obs_rms = RunningMeanStd((int(state_dim),))
        self.encoder = ObsEncoder(state_dim, cameras, feature_dim, channels)
        features = self.encoder.out_dim
        outputs = {"gaussian": action_dim * (2 if state_dependent_std else 1), "categorical": action_dim * bins}[head]
        self.actor = tanh_mlp([features, *hidden, outputs], out_gain=0.01)
        self.critic = tanh_mlp([features, *hidden, 1], out_gain=1.0)
        self.log_std = None
        if head == "gaussian" and not state_dependent_std:
            self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))
        self.init_log_std = float(init_log_std)
        self.register_buffer("centres", torch.linspace(-1.0, 1.0, max(int(bins), 2)))
        self.discrete = nvec is not None
        # discrete dimensions with fewer than `bins` values: the missing logits get -1e9 (never drawn)
        mask = torch.zeros(action_dim, self.bins)
        for d, n in enumerate(nvec or []):
            mask[d, int(n):] = -1e9
        self.register_buffer("logit_mask", mask)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, **copy.deepcopy(self.config)}

    @property
    def device(self) -> torch.device:
        return self.centres.device

    # -- the networks ----------------------------------------------------------------------
    def normalize(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """``state`` -> clip((state - mean) / sqrt(var + 1e-8), +-clip_obs); pixels untouched."""
        out = dict(obs)
        if self.normalize_obs and self.encoder.state_dim:
            mean, inv_std = self.obs_rms.affine()
            out["state"] = ((obs["state"].float() - mean) * inv_std).clamp(-self.clip_obs, self.clip_obs)
        return out

    def features(self, obs: Mapping[str, Any]) -> torch.Tensor:
        """Raw observation tensors -> encoder features (normalisation inside)."""
        return self.encoder(self.normalize(obs))

    def dist_params(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Gaussian: (mean, log_std), each (B, A); categorical: (log-probabilities (B, A, bins), None)."""
        out = self.actor(features)
        if self.head == "categorical":
            logits = out.view(*out.shape[:-1], self.action_dim, self.bins)
            return (logits + self.logit_mask if self.discrete else logits).log_softmax(-1), None
        if self.log_std is None:
            mean, log_std = out.chunk(2, -1)
            return mean, (log_std + self.init_log_std).clamp(-5.0, 2.0)
        return out, self.log_std.expand_as(out)

    def log_prob(self, params: tuple, sample: torch.Tensor) -> torch.Tensor:
        """(B,) log-probability of ``sample`` (raw Gaussian ``u`` or token ids), summed over dimensions."""
        a, log_std = params
        if self.head == "categorical":
            return a.gather(-1, sample.long().unsqueeze(-1)).squeeze(-1).sum(-1)
        z = (sample - a) * torch.exp(-log_std)
        return (-0.5 * z.pow(2) - log_std).sum(-1) - HALF_LOG_2PI * self.action_dim

    def entropy(self, params: tuple) -> torch.Tensor:
        """(B,) entropy of the action distribution, summed over dimensions."""
        a, log_std = params
        if self.head == "categorical":
            return -(a.exp() * a).sum((-2, -1))
        return (log_std + 0.5 + HALF_LOG_2PI).sum(-1)

    def sample(self, params: tuple, deterministic: bool = False) -> torch.Tensor:
        """A draw (or the mean / mode): raw Gaussian ``u`` (B, A) or token ids (B, A)."""
        a, log_std = params
        if self.head == "categorical":
            if deterministic:
                return a.argmax(-1)
            flat = torch.multinomial(a.exp().reshape(-1, self.bins), 1)
            return flat.view(a.shape[:-1])
        return a if deterministic else a + torch.exp(log_std) * torch.randn_like(a)

    def value_of(self, features: torch.Tensor) -> torch.Tensor:
        return self.critic(features).squeeze(-1)

    def to_action(self, sample: torch.Tensor) -> torch.Tensor:
        """A sample (raw Gaussian ``u`` or token ids) -> action in [-1, 1] (discrete: the choice)."""
        if self.discrete:
            return sample.float()
        if self.head == "categorical":
            return self.centres[sample]
        return sample.clamp(-1.0, 1.0)

    def tokens_of(self, action: torch.Tensor) -> torch.Tensor:
        """Actions in [-1, 1] -> the nearest bin's token id (the inverse of :meth:`to_action`)."""
        if self.discrete:
            return action.round().long()
        return ((action.clamp(-1.0, 1.0) + 1.0) * 0.5 * (self.bins - 1)).round().long()

    # -- the Policy contract ---------------------------------------------------------------
    @torch.no_grad()
    def step(self, obs: Obs, state: Any = None, deterministic: bool = False) -> PolicyStep:
        """Actions for a batch of numpy observations, with log_prob, value and the sample."""
        feats = self.features(self.encoder.numpy_to_tensors(obs, self.device))
        params = self.dist_params(feats)
        sample = self.sample(params, deterministic)
        key = "tokens" if self.head == "categorical" else "raw_action"
        return PolicyStep(action=self.to_action(sample).cpu().numpy().astype(np.float32, copy=False),
                          log_prob=self.log_prob(params, sample).cpu().numpy(),
                          value=self.value_of(feats).cpu().numpy(),
                          extras={key: sample.cpu().numpy()})

    def act(self, obs: Obs, deterministic: bool = False) -> np.ndarray:
        """Batch of numpy observations -> (B, A) float32 actions in [-1, 1]."""
        return self.step(obs, deterministic=deterministic).action

    @torch.no_grad()
    def value(self, obs: Obs) -> np.ndarray:
        """(B,) float32 V(s) of a batch of numpy observations (e.g. true final observations)."""
        return self.value_of(self.features(self.encoder.numpy_to_tensors(obs, self.device))).cpu().numpy()

    def reset(self, env_ids=None) -> None:
        return None  # stateless
