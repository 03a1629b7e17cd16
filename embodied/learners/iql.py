"""Implicit Q-Learning (Kostrikov et al. 2021) with the CORL defaults.

Three named loss terms, each moving only its own networks:

``loss/value``  expectile regression of V(s) toward min(Q1, Q2)(s, a) of the target critics:
                ``|tau - 1(u < 0)| * u^2`` with ``u = Q_target - V``. Moves V.
``loss/q``      twin-Q TD regression toward ``r + discount * V(s')`` (``discount`` already
                holds ``gamma^k (1 - terminated)``). Moves Q1, Q2 and the pixel encoder.
``loss/actor``  advantage-weighted regression: ``-exp(beta * A).clamp(max=100) * log pi(a|s)``
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
from typing import Any, Literal, Mapping

import numpy as np
import torch
from torch import nn

from embodied.checkpoint import optimizer_state
from embodied.contracts import Batch, Learner
from embodied.learners.hl_gauss import HLGauss
from embodied.learners.nets import ensemble_mlp
from policies.actor import mlp
from policies.encoders import ObsEncoder, RandomShift
from policies.iql import IQLPolicy


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
    critic_head: Literal["mse", "hl_gauss"] = "mse"
    """Q output: a scalar regressed by MSE, or HL-Gauss logits over ``num_bins`` bins of
    [v_min, v_max] trained by cross-entropy (embodied/learners/hl_gauss.py); V stays a scalar
    (its expectile loss is a regression)."""
    v_min: float = 0.0
    """HL-Gauss: lower end of the value range."""
    v_max: float = 100.0
    """HL-Gauss: upper end of the value range."""
    num_bins: int = 51
    """HL-Gauss: bins over the value range."""
    hl_sigma: float = 0.75
    """HL-Gauss: std of the target Gaussian, in bin widths."""
    feature_dim: int = 50
    """Pixel encoder output size (pixel observations only)."""
    shift_pad: int = 4
    """Random-shift augmentation padding for pixels during training (0: off)."""
    device: str = "cpu"
    """torch device of the networks."""


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Mean of ``|tau - 1(u < 0)| * u^2`` over ``u = diff``."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.pow(2)).mean()


def advantage_weights(adv: torch.Tensor, beta: float, max_weight: float) -> torch.Tensor:
    """``exp(beta * A)`` capped at ``max_weight``."""
    return torch.exp(beta * adv).clamp(max=max_weight)


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
        self.actor = IQLPolicy(self.action_dim, state_dim, cameras, cfg.hidden, cfg.feature_dim,
                               deterministic=cfg.deterministic_actor).to(self.device)
        # The critics' encoder (pixels) is their own; the actor's encoder is not trained
        # by its loss but copied from the critics' after each update, so the shipped
        # policy sees the same features.
        self.encoder = copy.deepcopy(self.actor.encoder)
        feat = self.encoder.out_dim
        hl = HLGauss(cfg.v_min, cfg.v_max, cfg.num_bins, cfg.hl_sigma) if cfg.critic_head == "hl_gauss" else None
        self.q = TwinQ(feat + self.action_dim, cfg.hidden, hl).to(self.device)
        self.v = mlp([feat, *cfg.hidden, 1]).to(self.device)
        self.q_target = copy.deepcopy(nn.ModuleList([self.q, self.encoder]))
        self.q_target.requires_grad_(False)
        self._online = list(self.q.parameters()) + list(self.encoder.parameters())
        self._targets = list(self.q_target[0].parameters()) + list(self.q_target[1].parameters())
        self.shift = RandomShift(cfg.shift_pad)
        # One Adam, one parameter group per loss term: the terms touch disjoint parameters
        # (V and the actor read detached features), so one backward of their sum gives
        # each group exactly its own term's gradient.
        actor_params = list(self.actor.net.parameters()) + ([self.actor.log_std] if self.actor.log_std is not None else [])
        self.opt = torch.optim.Adam([{"params": list(self.v.parameters())}, {"params": self._online},
                                     {"params": actor_params}], lr=cfg.lr)
        self.steps = 0
        self.normalizer_fitted = not (cfg.normalize_state and state_dim)

    # -- networks -------------------------------------------------------------------------
    def loss_owners(self) -> dict[str, list]:
        """The trainable networks each loss term may move."""
        actor = [self.actor.net] + ([self.actor.log_std] if self.actor.log_std is not None else [])
        return {"loss/value": [self.v], "loss/q": [self.q, self.encoder], "loss/actor": actor}

    def prepare_offline(self, replay) -> None:
        """State statistics of the whole offline dataset (CORL's normalisation)."""
        if "state" in replay.obs:
            self.fit_normalizer(replay.obs["state"][: len(replay)])

    def fit_normalizer(self, states: np.ndarray) -> None:
        """Normalise states with the mean/std of ``states`` (the dataset's), std floored at 1e-3."""
        if not self.cfg.normalize_state or self.actor.state_mean.numel() == 0:
            return
        states = np.asarray(states, np.float64).reshape(len(states), -1)
        self.actor.state_mean.copy_(torch.as_tensor(states.mean(0), dtype=torch.float32))
        self.actor.state_std.copy_(torch.as_tensor(states.std(0) + 1e-3, dtype=torch.float32))
        self.normalizer_fitted = True

    def _features(self, encoder: ObsEncoder, obs: Mapping[str, Any], augment: bool) -> torch.Tensor:
        obs = self.actor.normalize(obs)
        if augment and self.cfg.shift_pad and encoder.cameras:
            obs["pixels"] = {c: self.shift(x) for c, x in obs["pixels"].items()}
        return encoder(obs)

    def _q_target(self, obs, action, augment: bool) -> torch.Tensor:
        q_nets, encoder = self.q_target
        return q_nets(torch.cat([self._features(encoder, obs, augment), action], -1)).min(0).values

    # -- losses ---------------------------------------------------------------------------
    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The three named terms ``loss/value``, ``loss/q``, ``loss/actor`` plus diagnostics (tensors)."""
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
        q_loss, q = self.q.loss(torch.cat([feats, action], -1), td_target)  # q: (2, B)
        weights = advantage_weights(adv, cfg.beta, cfg.max_weight)
        mean, std = self.actor.dist_params(feats.detach())
        if std is None:
            per_sample = (mean - action).pow(2).sum(-1)
        else:
            per_sample = (0.5 * ((action - mean) / std).pow(2) + std.log() + 0.5 * math.log(2 * math.pi)).sum(-1)
        actor_loss = (weights * per_sample).mean()
        return {"loss/value": value_loss, "loss/q": q_loss, "loss/actor": actor_loss,
                "v": v.mean().detach(), "q": q[0].mean().detach(), "adv": adv.mean(), "weight": weights.mean()}

    def update(self, batch: Batch) -> dict[str, float]:
        if not self.normalizer_fitted:
            self.fit_normalizer(batch.obs["state"].cpu().numpy())
        terms = self.losses(batch)
        self.opt.zero_grad(set_to_none=True)
        (terms["loss/value"] + terms["loss/q"] + terms["loss/actor"]).backward()
        self.opt.step()
        self.steps += 1
        actor_group = self.opt.param_groups[2]
        if self.cfg.actor_lr_steps:
            frac = min(self.steps / self.cfg.actor_lr_steps, 1.0)
            actor_group["lr"] = self.cfg.lr * 0.5 * (1.0 + math.cos(math.pi * frac))
        with torch.no_grad():
            torch._foreach_lerp_(self._targets, self._online, self.cfg.tau)
            if self.encoder.cameras:
                self.actor.encoder.load_state_dict(self.encoder.state_dict())
        out = dict(zip(terms, torch.stack([t.detach() for t in terms.values()]).tolist()))
        out["actor_lr"] = actor_group["lr"]
        return out

    # -- contract -------------------------------------------------------------------------
    def policy(self) -> IQLPolicy:
        return self.actor

    def state_dict(self) -> dict[str, Any]:
        return {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.cfg).items()},
                "actor": self.actor.state_dict(), "q": self.q.state_dict(), "v": self.v.state_dict(),
                "q_target": self.q_target.state_dict(),
                "encoder": self.encoder.state_dict(),
                "opt": self.opt.state_dict(), "steps": self.steps,
                "normalizer_fitted": self.normalizer_fitted}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.q.load_state_dict(state["q"])
        self.v.load_state_dict(state["v"])
        self.q_target.load_state_dict(state["q_target"])
        self.encoder.load_state_dict(state["encoder"])
        self.opt.load_state_dict(optimizer_state(state["opt"]))
        self.steps = int(state["steps"])
        self.normalizer_fitted = bool(state["normalizer_fitted"])


class TwinQ(nn.Module):
    """Two Q MLPs evaluated as one batched ensemble: (B, in) -> (2, B); with ``hl`` each
    outputs HL-Gauss logits and its value is their expectation."""

    def __init__(self, d_in: int, hidden: tuple[int, ...], hl: HLGauss | None = None):
        super().__init__()
        self.hl = hl
        self.net = ensemble_mlp(2, [d_in, *hidden, hl.num_bins if hl is not None else 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x.expand(2, *x.shape))
        return self.hl.value(out) if self.hl is not None else out.squeeze(-1)

    def loss(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean over both critics and the rows of the loss against (B,) targets -> (loss, (2, B) Q)."""
        out = self.net(x.expand(2, *x.shape))
        if self.hl is None:
            q = out.squeeze(-1)
            return (q - target).pow(2).mean(), q  # = mean of the two critics' MSEs
        return self.hl.loss(out, target.expand(2, -1)).mean(), self.hl.value(out)


def _to(obs: Mapping[str, Any], device) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if obs.get("state") is not None:
        out["state"] = obs["state"].to(device)
    if obs.get("pixels") is not None:
        out["pixels"] = {c: x.to(device) for c, x in obs["pixels"].items()}
    return out
