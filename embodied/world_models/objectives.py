"""The world-model objectives' terms, each a function of tensors (hand-checked in tests).

Latent objectives (pixels; an RSSM, ``nets.RSSM``):

- ``recon`` (Dreamer): ``recon NLL + reward NLL + continuation NLL + max(KL_bal, free_nats)``
  with ``KL_bal = a KL(sg(post) || prior) + (1 - a) KL(post || sg(prior))``, a = 0.8.
- ``repo`` (RePo): ``reward NLL + continuation NLL + sg(beta) (KL_bal - eps)``, a = 5/6, eps = 3
  nats, no free nats and no reconstruction; ``beta = exp(log_beta)`` is a dual variable trained by
  Adam (lr 1e-4) on ``-log_beta * sg(KL - eps)`` from beta = 1e-5: it rises while the KL is above
  its target and falls below it, slowly by design (:class:`Dual`).
- ``infopower`` (InfoPower, as its ICLR submission writes it; its appendix with the numbers was
  not available): ``max NCE(o_t; z_t) + lambda (C - c_0)`` with the constraint
  ``C = -KL(post || prior) + E log q(a_{t-1} | z_t, z_{t-1}) + E log q(r_t | z_t)`` (forward
  predictability, the empowerment bound through an inverse-dynamics model, reward), all three
  with weight 1 and ONE Lagrange multiplier lambda (a :class:`Dual` on ``c_0 - C``, so it rises
  while the constraint is violated). The contrastive score is bilinear, ``f(z_t, o_t') = z_t^T W e_t'``,
  the positives at the same step and every other step of the batch the negatives (InfoNCE). The
  paper's c_0, lambda's start and learning rate are not known: ``c_0 = -3`` nats, lambda from 1, lr
  1e-4 are this project's choices. Imagined rewards add the inverse-dynamics log-likelihood
  ``log q(a_t | z_{t+1}, z_t)`` (the empowerment estimate, weight 1 in the paper) for exploration.

State objectives (an MLP ensemble, ``nets.EnsembleDynamics``, in an MBPO loop):

- ``mle``: Gaussian NLL of (delta state, reward) per member (MBPO), plus the continuation's BCE.
- ``vagram``: ``mean_dims[(1/K) sum_k (g_k * (pred_delta - true_delta))^2] + (r_hat - r)^2`` with
  ``g_k = dQ_k(s', mu(s')) / ds'`` at the REAL next state for the K = 4 Q-functions (SAC's two
  critics and their two targets), cached per replay slot and cleared at every model retrain;
  plain MSE is added during the first retrain only.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from embodied.world_models.nets import Latent


def kl_gauss(mean_p: torch.Tensor, std_p: torch.Tensor, mean_q: torch.Tensor, std_q: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean_p, std_p) || N(mean_q, std_q))`` summed over the last dim."""
    var_p, var_q = std_p**2, std_q**2
    return (torch.log(std_q / std_p) + (var_p + (mean_p - mean_q) ** 2) / (2 * var_q) - 0.5).sum(-1)


def balanced_kl(post: Latent, prior: Latent, balance: float) -> torch.Tensor:
    """``a KL(sg(post) || prior) + (1 - a) KL(post || sg(prior))`` (a = ``balance``): the prior
    learns toward the posterior faster than the posterior is regularised toward it."""
    to_prior = kl_gauss(post.mean.detach(), post.std.detach(), prior.mean, prior.std)
    to_post = kl_gauss(post.mean, post.std, prior.mean.detach(), prior.std.detach())
    return balance * to_prior + (1.0 - balance) * to_post


def gaussian_nll(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Unit-variance Gaussian NLL summed over the last dim, constants dropped: ``0.5 ||pred - target||^2``."""
    return 0.5 * ((pred - target) ** 2).sum(-1)


class Dual(nn.Module):
    """A Lagrange multiplier ``beta = exp(log_beta)`` with its own Adam: :meth:`update` takes the
    constraint's violation ``g`` (> 0: violated) and descends ``-log_beta * g``, so beta rises
    while the violation is positive and falls once it is negative."""

    def __init__(self, init: float, lr: float):
        super().__init__()
        self.log_beta = nn.Parameter(torch.tensor(math.log(init)))
        self.opt = torch.optim.Adam([self.log_beta], lr=lr)

    @property
    def value(self) -> torch.Tensor:
        return self.log_beta.exp().detach()

    def loss(self, violation: torch.Tensor) -> torch.Tensor:
        return -(self.log_beta * violation.detach()).mean()

    def update(self, violation: torch.Tensor) -> torch.Tensor:
        loss = self.loss(violation)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()


def info_nce(z: torch.Tensor, e: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """InfoNCE over ``N`` pairs: scores ``z_i^T W e_j``, positive j = i, the other N - 1 rows the
    negatives; returns the mean ``log softmax`` of the positives (a lower bound on I - log N)."""
    scores = z @ w @ e.T
    return torch.diagonal(scores.log_softmax(-1)).mean()


class InverseDynamics(nn.Module):
    """``q(a_{t-1} | z_t, z_{t-1})``: a diagonal Gaussian over the (tanh-squashed) action, its
    mean and log-std from the two latents' features (the empowerment bound's variational term)."""

    def __init__(self, feat_dim: int, action_dim: int, hidden: int = 200):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * feat_dim, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(),
                                 nn.Linear(hidden, 2 * action_dim))

    def log_prob(self, feat_prev: torch.Tensor, feat: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        mean, log_std = self.net(torch.cat([feat_prev, feat], -1)).chunk(2, -1)
        mean, log_std = torch.tanh(mean), log_std.clamp(-5.0, 2.0)
        return (-0.5 * ((action - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def ensemble_nll(mean: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MBPO's Gaussian NLL ``mean over (E, B, D) of (mu - y)^2 / var + log var``."""
    return (((mean - target) ** 2) * torch.exp(-logvar) + logvar).mean()


def vagram_loss(pred_delta: torch.Tensor, true_delta: torch.Tensor, grads: torch.Tensor,
                pred_reward: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
    """VaGraM: ``mean_dims[(1/K) sum_k (g_k * (pred - true))^2] + (r_hat - r)^2``, averaged over rows
    and ensemble members. ``pred_delta`` (E, B, D); ``grads`` (B, K, D), the value gradients at the
    real next state; ``pred_reward`` (E, B)."""
    err = pred_delta - true_delta  # (E, B, D)
    weighted = ((grads[None] * err[:, :, None, :]) ** 2).mean(2)  # (E, B, D): mean over the K value functions
    return weighted.mean(-1).mean() + ((pred_reward - reward) ** 2).mean()


def lambda_returns(reward: torch.Tensor, value: torch.Tensor, discount: torch.Tensor, lam: float) -> torch.Tensor:
    """Dreamer's lambda-returns over an imagined horizon (time first): ``reward``, ``discount``
    (H, N) for the steps 0..H-1, ``value`` (H + 1, N) at the states 0..H;
    ``R_t = r_t + d_t ((1 - lam) v_{t+1} + lam R_{t+1})``, ``R_H = v_H`` -> (H, N)."""
    out, last = [], value[-1]
    for t in reversed(range(reward.shape[0])):
        last = reward[t] + discount[t] * ((1 - lam) * value[t + 1] + lam * last)
        out.append(last)
    return torch.stack(out[::-1])


def bce_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none")
