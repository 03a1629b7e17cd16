"""Flow-SDE log-probabilities for LeRobot's flow-matching VLAs (SmolVLA, pi0): the stochastic
sampler RL fine-tuning (PPO, GRPO) samples through, and the log-likelihood of what it sampled.

    sde = FlowSDE(lerobot_policy.model)                 # a SmolVLAPolicy or PI0Policy
    batch = lerobot_policy.preprocess(obs)               # normalised state, tokenised instruction
    out = sde.sample(batch, generator=g)                 # out.actions (B, chunk, A), normalised
    env_chunk = lerobot_policy.postprocess(out.actions)  # the contract's actions in [-1, 1]
    # store out.path and out.log_prob with the rollout; at update time
    ratio = (sde.log_prob(batch, out.path) - out.log_prob).exp()   # differentiable; 1 before a step

**Time convention** (LeRobot's, which is openpi's and Flow-GRPO's): ``x_t = t * noise + (1 - t)
* action``, so t = 1 is pure noise and t = 0 the action; the network predicts the velocity
``v_t(x_t) ~ noise - action = dx_t/dt``. LeRobot's ODE sampler takes K Euler steps down from
t = 1 (``num_steps`` for SmolVLA, ``num_inference_steps`` for pi0; 10): ``t_i = 1 - i/K``,
``dt = -1/K``, ``x_{i+1} = x_i + dt * v_i``.

**The SDE** (Flow-GRPO; RLinf's ``flow_sde``) has the ODE's marginals at every t: integrated
downwards in t it is ``dx = [v + sigma_t^2 / (2t) * (x + (1 - t) v)] dt + sigma_t dW``, where
``x + (1 - t) v = E[noise | x_t] = -t * score``. Because LeRobot's t runs from noise to data
as Flow-GRPO's does, its step needs no sign change: with dt < 0 each Euler-Maruyama step is
the Gaussian

    mean_i = x_i + dt * [v_i + sigma_i^2 / (2 t_i) * (x_i + (1 - t_i) * v_i)]
    std_i  = sigma_i * sqrt(|dt|),        sigma_i = noise_level * sqrt(t_i / (1 - t_i))

(``noise_level`` 0.5), and the path's log-likelihood is the sum over steps of
``log N(x_{i+1}; mean_i, std_i^2)``. At t_0 = 1 sigma is infinite; as RLinf and Flow-GRPO do,
the first step's denominator uses the next grid time: ``sigma_0 = noise_level * sqrt(1 / (1 -
t_1)) = noise_level * sqrt(K)`` (1.58 for K = 10). The last step is at t = 1/K; t = 0 is never
evaluated. :func:`sigma_schedule` and :func:`sde_step` are the formulas, apart from any model.

**What is random:** the env's action dims of the first ``stochastic`` positions of the chunk
(default: all of them; PPO sets it to the positions the env executes, ``n_action_steps``).
Everything else, the padded dims (``max_action_dim`` beyond the action feature; LeRobot never
trains them) and the positions the env never plays, follows its mean: a deterministic function
of the initial noise and the random parts, so the likelihood of the random parts is that of
the whole path and nothing the env never sees adds variance to a policy gradient. The initial
noise is N(0, I) whatever the weights: it cancels in a ratio and is left out.

``log_prob`` recomputes the path under the CURRENT weights from its initial noise: the random
parts are the stored ones, the deterministic parts are rolled forward again (under new weights
they move, and the gradient flows through them), with the same float operations as ``sample``,
so the ratio is exactly 1 before an update. :meth:`FlowSDE.pack` keeps only what that needs
(the initial noise and the random parts: ``chunk * D + K * stochastic * A`` numbers per row;
1,950 rather than the path's 17,600 for a 50 x 32 SmolVLA chunk of which 5 actions of 7 dims play).
Run both with the model in eval mode (LeRobot's VLAs have no dropout at their defaults).

:meth:`FlowSDE.prefix` also returns the prefix's pooled features (the VLM's last hidden
states averaged over the valid image / language / state tokens) for a value head.

``sample(deterministic=True)`` is sigma = 0: LeRobot's own ODE sampler, the chunk that
``predict_action_chunk(batch, noise=path[:, 0])`` returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

FAMILIES = ("smolvla", "pi0")


def sigma_schedule(num_steps: int, noise_level: float = 0.5) -> list[float]:
    """``sigma_i = noise_level * sqrt(t_i / (1 - t_i))`` at ``t_i = 1 - i/K``; the t = 1
    step divides by ``1 - t_1 = 1/K`` instead of 0."""
    k = int(num_steps)
    times = [1.0 - i / k for i in range(k)]
    return [noise_level * math.sqrt(t / (1.0 / k if t == 1.0 else 1.0 - t)) for t in times]


def sde_step(x: Tensor, v: Tensor, t: float, dt: float, sigma: float) -> tuple[Tensor, float]:
    """Mean and std of ``x_{t+dt}`` given ``x_t`` and the velocity ``v_t(x_t)`` (dt < 0)."""
    mean = x + dt * (v + sigma**2 / (2.0 * t) * (x + (1.0 - t) * v))
    return mean, sigma * math.sqrt(abs(dt))


def gaussian_log_prob(x: Tensor, mean: Tensor, std: float) -> Tensor:
    """Elementwise ``log N(x; mean, std^2)``."""
    return -((x - mean) ** 2) / (2.0 * std**2) - math.log(std) - 0.5 * math.log(2.0 * math.pi)


@dataclass
class FlowSample:
    actions: Tensor  # (B, chunk, A): the action dims of x at t = 0, normalised (the post-processor maps them)
    path: Tensor  # (B, K + 1, chunk, D): x at t = 1, 1 - 1/K, ..., 0 (D = max_action_dim)
    log_prob: Tensor | None  # (B,): summed over steps, chunk and action dims; None when deterministic


class FlowSDE:
    """The flow-SDE sampler and path log-likelihood of a LeRobot SmolVLA or pi0 policy."""

    def __init__(self, policy, noise_level: float = 0.5, num_steps: int | None = None,
                 stochastic: int | None = None):
        from policies.lerobot_policy import lerobot_compat

        kind = getattr(policy.config, "type", None)
        if kind not in FAMILIES:
            raise ValueError(f"FlowSDE samples LeRobot flow policies ({', '.join(FAMILIES)}); got type={kind!r}")
        if not noise_level > 0:
            raise ValueError(f"noise_level must be > 0 (got {noise_level}); sample(deterministic=True) is the ODE")
        if getattr(policy.config, "adapt_to_pi_aloha", False):
            raise ValueError("FlowSDE does not take a SmolVLA with adapt_to_pi_aloha=true (its state decoding "
                             "rewrites the batch in place)")
        lerobot_compat()
        cfg = policy.config
        self.policy, self.noise_level = policy, float(noise_level)
        self.num_steps = int(num_steps or (cfg.num_steps if kind == "smolvla" else cfg.num_inference_steps))
        self.chunk_size, self.max_dim = int(cfg.chunk_size), int(cfg.max_action_dim)
        self.action_dim = int(cfg.output_features["action"].shape[0])
        self.stochastic = int(stochastic or self.chunk_size)
        if not 1 <= self.stochastic <= self.chunk_size:
            raise ValueError(f"stochastic={stochastic}: the random chunk positions must be 1 .. chunk_size="
                             f"{self.chunk_size}")
        self.dt = -1.0 / self.num_steps
        self.times = [1.0 + i * self.dt for i in range(self.num_steps)]  # as LeRobot's euler_integrate
        self.sigmas = sigma_schedule(self.num_steps, self.noise_level)

    def prefix(self, batch: Mapping[str, Any]) -> tuple[Callable[[Tensor, Tensor], Tensor], Tensor]:
        """One pass of the prefix (images, instruction, state) -> (the velocity ``v(x_t, t)``
        of the action expert on its cached K/V, the prefix's pooled features ``(B, H)``)."""
        return (_smolvla_prefix if self.policy.config.type == "smolvla" else _pi0_prefix)(self.policy, batch)

    def _velocity(self, batch: Mapping[str, Any]) -> Callable[[Tensor, Tensor], Tensor]:
        return self.prefix(batch)[0]

    def _time(self, t: float, like: Tensor) -> Tensor:
        return torch.tensor(t, dtype=torch.float32, device=like.device).expand(like.shape[0])

    def _step_log_prob(self, x_next: Tensor, mean: Tensor, std: float) -> Tensor:
        p, a = self.stochastic, self.action_dim
        return gaussian_log_prob(x_next[:, :p, :a], mean[:, :p, :a], std).sum(dim=(1, 2))

    def _next(self, mean: Tensor, random: Tensor) -> Tensor:
        """``mean`` with its random block (positions < stochastic, dims < action_dim) replaced by ``random``."""
        p, a = self.stochastic, self.action_dim
        top = torch.cat([random, mean[:, :p, a:]], dim=-1)
        return torch.cat([top, mean[:, p:]], dim=1)

    @torch.no_grad()
    def sample(self, batch: Mapping[str, Any], noise: Tensor | None = None,
               generator: torch.Generator | None = None, deterministic: bool = False,
               velocity: Callable[[Tensor, Tensor], Tensor] | None = None) -> FlowSample:
        """Draw a chunk along the SDE (or the ODE when ``deterministic``) from ``noise``
        (``(B, chunk, max_action_dim)``; drawn from ``generator`` when None). ``velocity``:
        one :meth:`prefix` already computed for ``batch``."""
        velocity = velocity or self._velocity(batch)
        device = next(self.policy.parameters()).device
        if noise is None:
            n = int(batch["observation.state"].shape[0])
            noise = torch.randn((n, self.chunk_size, self.max_dim), generator=generator, device=device)
        x, path = noise.float(), [noise.float()]
        log_prob = torch.zeros(x.shape[0], device=x.device)
        p, a = self.stochastic, self.action_dim
        for t, sigma in zip(self.times, self.sigmas):
            v = velocity(x, self._time(t, x))
            if deterministic:
                x = x + self.dt * v
            else:
                mean, std = sde_step(x, v, t, self.dt, sigma)
                eps = torch.randn(mean[:, :p, :a].shape, generator=generator, device=mean.device)
                x = self._next(mean, mean[:, :p, :a] + std * eps)
                log_prob += self._step_log_prob(x, mean, std)
            path.append(x)
        return FlowSample(x[..., :a], torch.stack(path, dim=1), None if deterministic else log_prob)

    # -- what a rollout stores ------------------------------------------------------------------
    @property
    def packed_size(self) -> int:
        return self.chunk_size * self.max_dim + self.num_steps * self.stochastic * self.action_dim

    def pack(self, path: Tensor) -> Tensor:
        """``(B, K + 1, chunk, D)`` path -> ``(B, packed_size)``: its initial noise and its random parts."""
        b, p, a = path.shape[0], self.stochastic, self.action_dim
        return torch.cat([path[:, 0].reshape(b, -1), path[:, 1:, :p, :a].reshape(b, -1)], dim=1)

    def unpack(self, flat: Tensor) -> Tensor:
        """The inverse of :meth:`pack`, the deterministic parts zero (:meth:`log_prob` rolls them)."""
        if flat.ndim != 2 or flat.shape[1] != self.packed_size:
            raise ValueError(f"a packed flow path has {self.packed_size} numbers per row (chunk {self.chunk_size} x "
                             f"{self.max_dim} noise + {self.num_steps} steps x {self.stochastic} x "
                             f"{self.action_dim}); got shape {tuple(flat.shape)}")
        b, k, p, a = flat.shape[0], self.num_steps, self.stochastic, self.action_dim
        split = self.chunk_size * self.max_dim
        path = flat.new_zeros(b, k + 1, self.chunk_size, self.max_dim)
        path[:, 0] = flat[:, :split].reshape(b, self.chunk_size, self.max_dim)
        path[:, 1:, :p, :a] = flat[:, split:].reshape(b, k, p, a)
        return path

    def log_prob(self, batch: Mapping[str, Any], path: Tensor,
                 velocity: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
        """``(B,)`` log-likelihood of a stored ``path`` (``FlowSample.path``, or its
        :meth:`pack`) under the current weights; differentiable with respect to every
        trainable parameter. Only the path's initial noise and random parts are read."""
        if path.ndim == 2:
            path = self.unpack(path)
        if path.shape[1] != self.num_steps + 1:
            raise ValueError(f"the path has {path.shape[1]} points; this sampler takes {self.num_steps} steps "
                             f"({self.num_steps + 1} points)")
        velocity = velocity or self._velocity(batch)
        path = path.detach()
        p, a = self.stochastic, self.action_dim
        x = path[:, 0]
        total = path.new_zeros(path.shape[0])
        for i, (t, sigma) in enumerate(zip(self.times, self.sigmas)):
            mean, std = sde_step(x, velocity(x, self._time(t, x)), t, self.dt, sigma)
            total = total + self._step_log_prob(path[:, i + 1], mean, std)
            x = self._next(mean, path[:, i + 1, :p, :a])
        return total

    def entropy(self) -> float:
        """Entropy of the path's random parts given the initial noise: a constant of the
        schedule (the step stds do not depend on the weights)."""
        n = self.stochastic * self.action_dim
        return float(sum(n * (math.log(s * math.sqrt(abs(self.dt))) + 0.5 * math.log(2 * math.pi * math.e))
                         for s in self.sigmas))


def _pooled(hidden: Tensor, pad: Tensor) -> Tensor:
    """Mean of ``hidden`` (B, L, H) over the valid tokens ``pad`` (B, L)."""
    w = pad.to(hidden.dtype).unsqueeze(-1)
    return (hidden * w).sum(1) / w.sum(1).clamp_min(1.0)


def _language(batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
    from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

    return batch[OBS_LANGUAGE_TOKENS], batch[OBS_LANGUAGE_ATTENTION_MASK]


def _smolvla_prefix(policy, batch: Mapping[str, Any]) -> tuple[Callable[[Tensor, Tensor], Tensor], Tensor]:
    """SmolVLA's prefix (images, language, state) through the VLM once, its K/V cached; each
    call runs the action expert on ``x_t`` (``VLAFlowMatching.denoise_step``)."""
    from lerobot.policies.common.vla_utils import make_att_2d_masks

    model = policy.model
    images, img_masks = policy.prepare_images(batch)
    tokens, masks = _language(batch)
    embs, pad, att = model.embed_prefix(images, img_masks, tokens, masks, state=policy.prepare_state(batch))
    out, cache = model.vlm_with_expert.forward(attention_mask=make_att_2d_masks(pad, att),
                                             position_ids=torch.cumsum(pad, dim=1) - 1, past_key_values=None,
                                             inputs_embeds=[embs, None], use_cache=model.config.use_cache)
    velocity = lambda x, t: model.denoise_step(prefix_pad_masks=pad, past_key_values=cache, x_t=x,  # noqa: E731
                                               timestep=t)
    return velocity, _pooled(out[0].float(), pad)


def _pi0_prefix(policy, batch: Mapping[str, Any]) -> tuple[Callable[[Tensor, Tensor], Tensor], Tensor]:
    """pi0's prefix (images, language) through PaliGemma once, its K/V cached; each call runs
    the Gemma expert on state + ``x_t`` (``PI0Pytorch.denoise_step``, which copies the cache)."""
    from lerobot.policies.common.vla_utils import make_att_2d_masks, prepare_attention_masks_4d

    model = policy.model
    images, img_masks = policy._preprocess_images(batch)
    tokens, masks = _language(batch)
    state = policy.prepare_state(batch)
    embs, pad, att = model.embed_prefix(images, img_masks, tokens, masks)
    model.paligemma_with_expert.paligemma.model.language_model.config._attn_implementation = "eager"
    out, cache = model.paligemma_with_expert.forward(
        attention_mask=prepare_attention_masks_4d(make_att_2d_masks(pad, att)),
        position_ids=torch.cumsum(pad, dim=1) - 1, past_key_values=None, inputs_embeds=[embs, None], use_cache=True)
    velocity = lambda x, t: model.denoise_step(state=state, prefix_pad_masks=pad,  # noqa: E731
                                               past_key_values=cache, x_t=x, timestep=t)
    return velocity, _pooled(out[0].float(), pad)
