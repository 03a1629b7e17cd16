"""Implicit Q-Learning (Kostrikov et al. 2021) with the CORL defaults.

Three named loss terms, each moving only its own networks:

``value_loss``  expectile regression of V(s) toward min(Q1, Q2)(s, a) of the target critics:
                ``|tau - 1(u < 0)| * u^2`` with ``u = Q_target - V``. Moves V.
``q_loss``      twin-Q TD regression toward ``r + discount * V(s')`` (``discount`` already
                holds ``gamma^k (1 - terminated)``). Moves Q1, Q2 and the pixel encoder.
``actor_loss``  advantage-weighted regression: ``-exp(beta * A).clamp(max=100) * log pi(a|s)``
                with ``A = Q_target(s, a) - V(s)``. Moves the actor.

V and the actor read the encoder's features detached, so pixels are learned through the
TD loss only (as DrQ does). States are normalised with dataset statistics
(:meth:`IQL.fit_normalizer`; fitted from the first batch if nobody called it), and the
normaliser lives in the policy so actors apply it too. Offline-to-online: keep calling
``update`` on batches of a ``MixedReplay``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embodied.contracts import Batch, Learner, Obs


@dataclass
class IQLConfig:
    expectile: float = 0.7
    """tau of the expectile value loss (0.9 for sparse antmaze-like tasks)."""
    beta: float = 3.0
    """Inverse temperature of the advantage weights (10 for sparse tasks)."""
    max_weight: float = 100.0
    """Cap on exp(beta * advantage)."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden sizes of the V, Q and actor MLPs."""
    lr: float = 3e-4
    """Adam learning rate of V, Q and the actor."""
    actor_lr_steps: int = 1_000_000
    """Cosine-anneal the actor lr to 0 over this many updates (0: constant)."""
    tau: float = 0.005
    """Polyak rate of the target critics."""
    batch_size: int = 256
    """Rows per update (the training loop samples this many)."""
    normalize_state: bool = True
    """Normalise states with dataset mean/std (kept in the policy)."""
    deterministic_actor: bool = False
    """True: a tanh-MLP actor trained by weighted MSE; False: Gaussian with state-independent std."""
    feature_dim: int = 50
    """Pixel encoder output size (pixel observations only)."""
    shift_pad: int = 4
    """Random-shift augmentation padding for pixels during training (0: off)."""
    device: str = "cpu"
    """torch device of the networks."""


def mlp(inp: int, hidden: tuple[int, ...], out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(inp, h), nn.ReLU()]
        inp = h
    return nn.Sequential(*layers, nn.Linear(inp, out))


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Mean of ``|tau - 1(u < 0)| * u^2`` over ``u = diff``."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.pow(2)).mean()


def advantage_weights(adv: torch.Tensor, beta: float, max_weight: float) -> torch.Tensor:
    """``exp(beta * A)`` capped at ``max_weight``."""
    return torch.exp(beta * adv).clamp(max=max_weight)


class ConvEncoder(nn.Module):
    """Pixels of every camera (uint8, B x H x W x 3) -> one feature vector, plus the state."""

    def __init__(self, cameras: dict[str, tuple[int, ...]], state_dim: int, feature_dim: int):
        super().__init__()
        self.cameras = sorted(cameras)
        self.convs = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        for cam in self.cameras:
            h, w, _ = cameras[cam]
            conv = nn.Sequential(nn.Conv2d(3, 32, 3, 2), nn.ReLU(), nn.Conv2d(32, 32, 3, 1), nn.ReLU(),
                                 nn.Conv2d(32, 32, 3, 1), nn.ReLU(), nn.Flatten())
            with torch.no_grad():
                n = conv(torch.zeros(1, 3, h, w)).shape[1]
            self.convs[cam] = conv
            self.heads[cam] = nn.Sequential(nn.Linear(n, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())
        self.out_dim = feature_dim * len(self.cameras) + state_dim

    def forward(self, pixels: dict[str, torch.Tensor], state: torch.Tensor | None) -> torch.Tensor:
        feats = [self.heads[c](self.convs[c](pixels[c].permute(0, 3, 1, 2).float() / 255.0 - 0.5))
                 for c in self.cameras]
        if state is not None:
            feats.append(state)
        return torch.cat(feats, -1)


def random_shift(img: torch.Tensor, pad: int) -> torch.Tensor:
    """DrQ augmentation: pad by replication and crop back at a random offset per image."""
    b, h, w, c = img.shape
    padded = F.pad(img.permute(0, 3, 1, 2).float(), (pad,) * 4, mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (b,), device=img.device)
    dy = torch.randint(0, 2 * pad + 1, (b,), device=img.device)
    rows = (dy[:, None] + torch.arange(h, device=img.device))[:, :, None].expand(b, h, w)
    cols = (dx[:, None] + torch.arange(w, device=img.device))[:, None, :].expand(b, h, w)
    out = padded[torch.arange(b)[:, None, None], :, rows, cols]  # (B, H, W, C)
    return out.to(img.dtype)


class IQLPolicy(nn.Module):
    """Normaliser + encoder + actor head: everything an actor runs, nothing more."""

    chunk_size = 1

    def __init__(self, state_dim: int, action_dim: int, cameras: dict[str, tuple[int, ...]] | None = None,
                 hidden: tuple[int, ...] = (256, 256), feature_dim: int = 50, deterministic: bool = False):
        super().__init__()
        self._spec = dict(state_dim=state_dim, action_dim=action_dim, cameras={k: list(v) for k, v in (cameras or {}).items()},
                          hidden=list(hidden), feature_dim=feature_dim, deterministic=deterministic)
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))
        self.encoder = ConvEncoder(cameras, state_dim, feature_dim) if cameras else None
        feat = self.encoder.out_dim if self.encoder else state_dim
        self.net = mlp(feat, tuple(hidden), action_dim)
        self.deterministic = deterministic
        self.log_std = nn.Parameter(torch.zeros(action_dim)) if not deterministic else None

    def spec(self) -> dict[str, Any]:
        return {"class": "embodied.learners.iql.IQLPolicy", **copy.deepcopy(self._spec)}

    def features(self, obs: Mapping[str, Any]) -> torch.Tensor:
        state = obs.get("state")
        if state is not None:
            state = (state.float() - self.state_mean) / self.state_std
        return self.encoder(obs["pixels"], state) if self.encoder else state

    def dist_params(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        mean = torch.tanh(self.net(feats))
        std = None if self.deterministic else self.log_std.clamp(-20.0, 2.0).exp().expand_as(mean)
        return mean, std

    @torch.no_grad()
    def act(self, obs: Obs, deterministic: bool = False) -> np.ndarray:
        device = self.state_mean.device
        t_obs = {}
        if "state" in obs:
            t_obs["state"] = torch.as_tensor(np.asarray(obs["state"], np.float32), device=device)
        if self.encoder is not None:
            t_obs["pixels"] = {c: torch.as_tensor(np.asarray(obs["pixels"][c]), device=device) for c in self.encoder.cameras}
        mean, std = self.dist_params(self.features(t_obs))
        if not (deterministic or std is None):
            mean = mean + std * torch.randn_like(mean)
        return mean.clamp(-1.0, 1.0).cpu().numpy().astype(np.float32)


class IQL(Learner):
    def __init__(self, obs_space, action_space, cfg: IQLConfig | None = None):
        self.cfg = cfg = cfg or IQLConfig()
        spaces = obs_space.spaces
        state_dim = int(np.prod(spaces["state"].shape)) if "state" in spaces else 0
        cameras = {c: tuple(s.shape) for c, s in spaces["pixels"].spaces.items()} if "pixels" in spaces else {}
        if not state_dim and not cameras:
            raise ValueError("IQL needs 'state' and/or 'pixels' in the observation space")
        self.action_dim = int(np.prod(action_space.shape))
        self.device = torch.device(cfg.device)
        self.actor = IQLPolicy(state_dim, self.action_dim, cameras, cfg.hidden, cfg.feature_dim,
                               cfg.deterministic_actor).to(self.device)
        # The critics' encoder (pixels) is their own; the actor's encoder is not trained
        # by its loss but copied from the critics' after each update, so the shipped
        # policy sees the same features.
        self.encoder = copy.deepcopy(self.actor.encoder)
        feat = self.encoder.out_dim if self.encoder else state_dim
        in_q = feat + self.action_dim
        self.q = nn.ModuleList([mlp(in_q, cfg.hidden, 1), mlp(in_q, cfg.hidden, 1)]).to(self.device)
        self.v = mlp(feat, cfg.hidden, 1).to(self.device)
        self.q_target = copy.deepcopy(nn.ModuleList([self.q, self.encoder] if self.encoder else [self.q]))
        self.q_target.requires_grad_(False)
        q_params = list(self.q.parameters()) + (list(self.encoder.parameters()) if self.encoder else [])
        self.q_opt = torch.optim.Adam(q_params, lr=cfg.lr)
        self.v_opt = torch.optim.Adam(self.v.parameters(), lr=cfg.lr)
        actor_params = list(self.actor.net.parameters()) + ([self.actor.log_std] if self.actor.log_std is not None else [])
        self.actor_opt = torch.optim.Adam(actor_params, lr=cfg.lr)
        self.steps = 0
        self.normalizer_fitted = not (cfg.normalize_state and state_dim)

    # -- networks -------------------------------------------------------------------------
    def networks(self) -> dict[str, list[nn.Module]]:
        """The trainable networks each loss term may move."""
        q = [self.q] + ([self.encoder] if self.encoder else [])
        return {"value_loss": [self.v], "q_loss": q, "actor_loss": [self.actor.net] + (
            [_ParamHolder(self.actor.log_std)] if self.actor.log_std is not None else [])}

    def fit_normalizer(self, states: np.ndarray) -> None:
        """Normalise states with the mean/std of ``states`` (the dataset's), std floored at 1e-3."""
        if not self.cfg.normalize_state or self.actor.state_mean.numel() == 0:
            return
        states = np.asarray(states, np.float64).reshape(len(states), -1)
        self.actor.state_mean.copy_(torch.as_tensor(states.mean(0), dtype=torch.float32))
        self.actor.state_std.copy_(torch.as_tensor(states.std(0) + 1e-3, dtype=torch.float32))
        self.normalizer_fitted = True

    def _features(self, encoder, obs: Mapping[str, Any], augment: bool) -> torch.Tensor:
        state = obs.get("state")
        if state is not None:
            state = (state.float() - self.actor.state_mean) / self.actor.state_std
        if encoder is None:
            return state
        pixels = obs["pixels"]
        if augment and self.cfg.shift_pad:
            pixels = {c: random_shift(x, self.cfg.shift_pad) for c, x in pixels.items()}
        return encoder(pixels, state)

    def _q_target(self, obs, action, augment: bool) -> torch.Tensor:
        q_nets = self.q_target[0]
        feats = self._features(self.q_target[1] if self.encoder else None, obs, augment)
        x = torch.cat([feats, action], -1)
        return torch.min(q_nets[0](x), q_nets[1](x)).squeeze(-1)

    # -- losses ---------------------------------------------------------------------------
    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The three named terms plus diagnostics (tensors)."""
        cfg = self.cfg
        obs, next_obs = _to(batch.obs, self.device), _to(batch.next_obs, self.device)
        action = batch.action.to(self.device).float()
        reward, discount = batch.reward.to(self.device).float(), batch.discount.to(self.device).float()
        feats = self._features(self.encoder, obs, augment=True)
        with torch.no_grad():
            target_q = self._q_target(obs, action, augment=True)
            next_v = self.v(self._features(self.encoder, next_obs, augment=True)).squeeze(-1)
            td_target = reward + discount * next_v
        v = self.v(feats.detach()).squeeze(-1)
        adv = (target_q - v).detach()
        value_loss = expectile_loss(target_q - v, cfg.expectile)
        x = torch.cat([feats, action], -1)
        q1, q2 = self.q[0](x).squeeze(-1), self.q[1](x).squeeze(-1)
        q_loss = 0.5 * (F.mse_loss(q1, td_target) + F.mse_loss(q2, td_target))
        weights = advantage_weights(adv, cfg.beta, cfg.max_weight)
        mean, std = self.actor.dist_params(feats.detach())
        if std is None:
            per_sample = (mean - action).pow(2).sum(-1)
        else:
            per_sample = -torch.distributions.Normal(mean, std).log_prob(action).sum(-1)
        actor_loss = (weights * per_sample).mean()
        return {"value_loss": value_loss, "q_loss": q_loss, "actor_loss": actor_loss,
                "v": v.mean().detach(), "q": q1.mean().detach(), "adv": adv.mean(), "weight": weights.mean()}

    def update(self, batch: Batch) -> dict[str, float]:
        if not self.normalizer_fitted:
            self.fit_normalizer(batch.obs["state"].cpu().numpy())
        terms = self.losses(batch)
        for name, opt in (("value_loss", self.v_opt), ("q_loss", self.q_opt), ("actor_loss", self.actor_opt)):
            opt.zero_grad(set_to_none=True)
            terms[name].backward()
            opt.step()
        self.steps += 1
        if self.cfg.actor_lr_steps:
            frac = min(self.steps / self.cfg.actor_lr_steps, 1.0)
            for group in self.actor_opt.param_groups:
                group["lr"] = self.cfg.lr * 0.5 * (1.0 + math.cos(math.pi * frac))
        with torch.no_grad():
            online = [self.q] + ([self.encoder] if self.encoder else [])
            for target, src in zip(self.q_target, online):
                for pt, p in zip(target.parameters(), src.parameters()):
                    pt.lerp_(p, self.cfg.tau)
            if self.encoder is not None:
                self.actor.encoder.load_state_dict(self.encoder.state_dict())
        out = {k: float(v.detach()) for k, v in terms.items()}
        out["actor_lr"] = self.actor_opt.param_groups[0]["lr"]
        return out

    # -- contract -------------------------------------------------------------------------
    def policy(self) -> IQLPolicy:
        return self.actor

    def state_dict(self) -> dict[str, Any]:
        return {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.cfg).items()},
                "actor": self.actor.state_dict(), "q": self.q.state_dict(), "v": self.v.state_dict(),
                "q_target": self.q_target.state_dict(),
                "encoder": self.encoder.state_dict() if self.encoder else {},
                "q_opt": self.q_opt.state_dict(), "v_opt": self.v_opt.state_dict(),
                "actor_opt": self.actor_opt.state_dict(), "steps": self.steps,
                "normalizer_fitted": self.normalizer_fitted}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.q.load_state_dict(state["q"])
        self.v.load_state_dict(state["v"])
        self.q_target.load_state_dict(state["q_target"])
        if self.encoder is not None:
            self.encoder.load_state_dict(state["encoder"])
        for name in ("q_opt", "v_opt", "actor_opt"):
            getattr(self, name).load_state_dict(_optimizer_state(state[name]))
        self.steps = int(state["steps"])
        self.normalizer_fitted = bool(state["normalizer_fitted"])


class _ParamHolder(nn.Module):
    """Wraps a bare parameter so it can be listed with the networks."""

    def __init__(self, p: nn.Parameter):
        super().__init__()
        self.p = p


def _to(obs: Mapping[str, Any], device) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if obs.get("state") is not None:
        out["state"] = obs["state"].to(device)
    if obs.get("pixels") is not None:
        out["pixels"] = {c: x.to(device) for c, x in obs["pixels"].items()}
    return out


def _optimizer_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """Optimizer state after a checkpoint round trip: per-parameter keys back to ints."""
    return {"state": {int(k): v for k, v in dict(state.get("state", {})).items()},
            "param_groups": state["param_groups"]}
