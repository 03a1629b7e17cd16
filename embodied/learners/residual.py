"""Residual off-policy RL over a frozen base policy (ResFiT, Ankile et al. 2025).

A behaviour-cloned base (``base_policy=``: the project's ``learner=bc`` policies or a
LeRobot ACT / Diffusion / SmolVLA checkpoint) acts; this learner trains a small per-step
correction of its actions from a sparse success reward and the demonstrations the base
was cloned from. Read top to bottom:

Acting (:class:`policies.residual.ResidualPolicy`)
    ``a = clip(base(o) + tanh(MLP([enc(o), base(o)])) * scale, -1, 1)``, plus Gaussian
    exploration noise (``explore_std``) while training. The MLP's last layer starts at
    zero: step 0 plays the base exactly. The base's chunks run open loop, a queue per env,
    reset at every episode boundary. During the first ``train.warmup_steps`` env steps the
    loop plays ``clip(base + U(-warmup_noise, warmup_noise))`` instead (:meth:`warmup_policy`).

Demonstrations (:meth:`prepare_offline`, on ``train.dataset``)
    Half of every batch comes from them (``train.offline_ratio``). The stored action stays
    the demonstrator's own; ``base_action`` is relabelled by running the base over each
    demo episode from its first step with fresh queues (nothing queued in one episode is
    played in the next); the reward is 1 on each demo's last step (terminal: the task is
    done there) and 0 elsewhere (``demo_reward=last_step``; ``dataset`` keeps the dataset's).

Critic (``num_critics`` heads, LayerNorm, one batched matmul per layer for all heads)
    ``Q_k(enc(o), a)`` on the EXECUTED action. Target:
    ``y = r_n + discount * min_{2 random heads} Q_target(enc(o'), a')`` with
    ``a' = clip(base' + residual_target(o', base') + clip(N(0, target_noise), ±target_noise_clip))``
    (TD3 target smoothing) and ``base'`` the base action stored at ``o'`` (the replay's
    ``next_base_action``); at an episode's final observation, where no step was taken, the
    base is asked afresh (a new chunk's first action). ``r_n`` / ``discount`` are the
    replay's n-step sums (``train.n_step``, default 3); a time-limit truncation bootstraps
    (the contract). ResFiT's own loop treats time-outs as terminal, which biases values
    down near the limit; we differ on purpose.
    Loss: the MEAN over heads of each head's squared TD error (every head regresses the
    target on its own). ResFiT's code squares the mean absolute error across heads,
    ``(mean_k |Q_k - y|)^2``, which couples the heads (each head's gradient is scaled by the
    ensemble's mean error) and pulls them together; we keep the heads independent, which
    keeps the ensemble's spread meaningful for the min-of-2 target. With
    ``critic_head=hl_gauss`` each head is an HL-Gauss classifier (cross-entropy over bins).
    The encoder (pixels) is trained by the critic loss only, with random-shift augmentation.

Actor (every ``actor_every``-th critic update, after ``critic_warmup`` critic-only updates)
    ``loss = -mean_k Q_k(enc(o), clip(base + residual(o, base)))`` on detached features;
    the target actor and target critic follow by Polyak averaging (``tau``). Critic and
    actor gradients are clipped to ``max_grad_norm``.

One :meth:`update` call takes ``batch_size * utd`` rows, shuffled (a mixed batch arrives
online half first), then ``utd`` critic updates (default 4 per env step) on consecutive
slices and the actor updates that fall due.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, Literal, Mapping

import numpy as np
import torch
from torch import nn

from embodied.checkpoint import optimizer_state
from embodied.contracts import Batch, Learner
from embodied.learners.nets import tree_map
from embodied.learners.sac import Critic, frozen, minibatches, shuffled, take_rows
from embodied.schema import num
from policies.encoders import RandomShift
from policies.residual import ResidualPolicy, WarmupPolicy

log = logging.getLogger("embodied")


@dataclass
class ResidualConfig:
    scale: float = num(0.1, gt=0)
    """Residual bound in normalised action units: tanh(.) * scale (ResFiT's runs: 0.2)."""
    actor_hidden: tuple[int, ...] = (256, 256)
    """Hidden sizes of the residual MLP (LayerNorm + ReLU)."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden sizes of every critic head (ResFiT: 1024, 1024 on a GPU)."""
    num_critics: int = num(10, ge=2)
    """Critic heads (fused: one batched matmul per layer)."""
    num_min: int = num(2, ge=1)
    """Targets take the min over this many random target heads."""
    layer_norm: bool = True
    """LayerNorm after every hidden layer of the critic heads."""
    critic_lr: float = num(1e-4, gt=0)
    """Adam learning rate of the critic and the encoder."""
    actor_lr: float = num(5e-6, gt=0)
    """Adam learning rate of the residual actor (ResFiT: 1e-6 to 5e-6: the base is good, move slowly)."""
    tau: float = num(0.005, gt=0, le=1)
    """Polyak rate of the target critic and target actor."""
    gamma: float = num(0.99, gt=0, le=1)
    """Discount; the replay folds it into batch.discount (kept equal to train.gamma)."""
    batch_size: int = num(256, ge=1)
    """Rows per critic update (half from demonstrations with train.offline_ratio=0.5)."""
    utd: int = num(4, ge=1)
    """Critic updates per update() call, i.e. per env step."""
    actor_every: int = num(4, ge=1)
    """One actor update per this many critic updates."""
    critic_warmup: int = num(10000, ge=0)
    """Critic-only updates before the first actor update (ResFiT: 10k)."""
    explore_std: float = num(0.05, ge=0)
    """Std of the Gaussian exploration noise on the executed action while training."""
    target_noise: float = num(0.05, ge=0)
    """Std of the TD3 target-policy smoothing noise on the target action."""
    target_noise_clip: float = num(0.3, ge=0)
    """The target noise is clipped to +- this."""
    warmup_noise: float = num(0.2, ge=0)
    """Warm-up (train.warmup_steps): the base plus U(-warmup_noise, warmup_noise)."""
    max_grad_norm: float = num(1.0, gt=0)
    """Global gradient-norm clip of the critic and of the actor."""
    demo_reward: Literal["last_step", "dataset"] = "last_step"
    """Demonstration rewards: 1 on each episode's last step (terminal), else 0; or the dataset's."""
    base_execute: int | None = num(None, ge=1)
    """Actions of each base chunk played before the base is asked again (null: the whole chunk)."""
    augment: bool = True
    """Random-shift augmentation (pad 4) of camera frames in critic updates."""
    feature_dim: int = num(50, ge=1)
    """Pixel features after the encoder's projection."""
    channels: int = num(32, ge=1)
    """Channels of each conv layer of the pixel encoder."""
    critic_head: Literal["mse", "hl_gauss"] = "mse"
    """Critic heads: scalars regressed by squared error, or HL-Gauss logits (cross-entropy)."""
    v_min: float = 0.0
    """HL-Gauss: lower end of the value range (sparse 0/1 reward: 0)."""
    v_max: float = 1.0
    """HL-Gauss: upper end of the value range (sparse reward, terminal on success: 1)."""
    num_bins: int = num(51, ge=2)
    """HL-Gauss: bins over [v_min, v_max] (ResFiT: 51 on [0, 1])."""
    hl_sigma: float = num(0.75, gt=0)
    """HL-Gauss: std of the target Gaussian, in bin widths."""
    seed: int = 0
    """Seed of the weights and of the learner's noise."""
    device: str = "cpu"
    """Torch device of the residual, the critics and the batches (the base keeps its own)."""

    def __post_init__(self):
        if self.num_min > self.num_critics:
            raise ValueError(f"learner.num_min={self.num_min} exceeds learner.num_critics={self.num_critics}")


class Residual(Learner):
    def __init__(self, obs_space, action_space, cfg: ResidualConfig | None = None, *, base=None,
                 base_source: str = ""):
        self.cfg = cfg = cfg or ResidualConfig()
        if base is None:
            raise ValueError("learner=residual needs a base policy: set base_policy=<policy folder | run folder | "
                             "LeRobot checkpoint | hub id>")
        spaces = obs_space.spaces
        cams = {c: tuple(s.shape) for c, s in spaces["pixels"].spaces.items()} if "pixels" in spaces else {}
        state_dim = int(spaces["state"].shape[0]) if "state" in spaces else 0
        self.action_dim = int(action_space.shape[0])
        self.device = torch.device(cfg.device)
        self.gen = torch.Generator(self.device).manual_seed(cfg.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.pi = ResidualPolicy(base_source, self.action_dim, state_dim, cams, cfg.actor_hidden, cfg.scale,
                                     cfg.explore_std, cfg.feature_dim, cfg.channels, cfg.base_execute,
                                     base=base).to(self.device)
            self.critic = Critic(self.pi.encoder.out_dim, self.action_dim, cfg).to(self.device)
        self.pi.rng = np.random.default_rng(cfg.seed)  # exploration noise
        self.warmup_rng = np.random.default_rng([cfg.seed, 1])  # warm-up noise
        self.encoder = self.pi.encoder  # trained by the critic loss; the actor reads it detached
        self.train_encoder = bool(cams)
        self.encoder.requires_grad_(self.train_encoder)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.target_actor = copy.deepcopy(self.pi.actor).requires_grad_(False)
        self.shift = RandomShift(4) if cams and cfg.augment else None
        critic_params = [*self.critic.parameters(), *(self.encoder.parameters() if self.train_encoder else [])]
        self.critic_opt = torch.optim.Adam(critic_params, lr=cfg.critic_lr)
        self.actor_opt = torch.optim.Adam(self.pi.actor.parameters(), lr=cfg.actor_lr)
        self._polyak = [(list(self.target_critic.parameters()), list(self.critic.parameters())),
                        (list(self.target_actor.parameters()), list(self.pi.actor.parameters()))]
        self.critic_updates = 0
        self.actor_updates = 0

    @property
    def base(self):
        return self.pi.base

    @property
    def rows_per_update(self) -> int:
        return self.cfg.batch_size * self.cfg.utd

    def warmup_policy(self) -> WarmupPolicy:
        """What acts during ``train.warmup_steps``: the base plus uniform noise (its generator is
        the learner's, so a resumed run continues the same noise)."""
        warmup = WarmupPolicy(self.pi, self.cfg.warmup_noise)
        warmup.rng = self.warmup_rng
        return warmup

    # ------------------------------------------------------------------ demonstrations
    def prepare_offline(self, replay) -> None:
        """Standardisation of the state from the demos; base actions relabelled over each demo
        episode from its start (fresh queues per episode); the demo reward (``demo_reward``)."""
        n = len(replay)
        if "state" in replay.obs and n and self.pi.encoder.state_dim:
            state = replay.obs["state"][:n].astype(np.float64)
            self.pi.set_state_stats(state.mean(0), state.std(0))
        relabel_base_actions(replay, self.pi)
        if self.cfg.demo_reward == "last_step":
            sparse_demo_rewards(replay)

    # ------------------------------------------------------------------ loss terms
    def _next_base(self, batch: Batch) -> torch.Tensor:
        """The base action at each row's next observation: stored by the step taken there, or
        (an episode's final observation) asked from the base afresh."""
        ex = batch.extras or {}
        if "next_base_action" not in ex:
            raise ValueError("learner=residual trains on rows with extras['base_action'] (stored by the residual "
                             "policy's steps and by the demo relabelling); this batch has none")
        base = ex["next_base_action"].to(self.device).float().clone()
        # no step was taken at an episode's final observation: ask the base there, unless the
        # target does not bootstrap (a termination: every demo's last step)
        unknown = ~ex["next_extras_known"].to(self.device).bool() & (batch.discount.to(self.device) > 0)
        if unknown.any():
            rows = torch.nonzero(unknown).squeeze(1)
            obs = take_rows({k: v for k, v in batch.next_obs.items() if k in ("state", "pixels", "instruction")}, rows)
            fresh = self.pi.new_state(int(rows.numel()))(tree_map(lambda x: x.cpu().numpy(), obs))
            base[rows] = torch.as_tensor(fresh, device=self.device)
        return base

    @torch.no_grad()
    def td_target(self, batch: Batch, next_base: torch.Tensor) -> torch.Tensor:
        """``r_n + discount * min over num_min random target heads of Q_target(o', a')`` with
        ``a' = clip(base' + residual_target(o', base') + clipped noise)``."""
        cfg = self.cfg
        next_features = self.pi.features(batch.next_obs)
        residual = self.target_actor(next_features, next_base)
        noise = (torch.randn(residual.shape, generator=self.gen, device=self.device) * cfg.target_noise
                 ).clamp(-cfg.target_noise_clip, cfg.target_noise_clip)
        next_action = (next_base + residual + noise).clamp(-1.0, 1.0)
        q_next = self.target_critic(next_features, next_action)
        heads = torch.randperm(cfg.num_critics, generator=self.gen, device=self.device)[: cfg.num_min]
        return batch.reward + batch.discount * q_next[heads].min(0).values

    def critic_loss(self, batch: Batch, next_base: torch.Tensor) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """Mean over heads of the squared TD error (HL-Gauss: cross-entropy); moves the critic
        and the encoder. Returns (loss, metrics, detached features of batch.obs)."""
        cfg = self.cfg
        target = self.td_target(batch, next_base)
        with torch.set_grad_enabled(self.train_encoder and torch.is_grad_enabled()):
            features = self.pi.features(batch.obs)
        loss, q = self.critic.loss(features, batch.action.float(), target)
        metrics = {"q/mean": q.mean(), "q/target": target.mean(), "q/std_heads": q.std(0).mean()}
        return loss / cfg.num_critics, metrics, features.detach()

    def actor_loss(self, features: torch.Tensor, base: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-mean over heads of Q at the executed action; moves the residual actor only."""
        residual = self.pi.actor(features, base)
        with frozen(self.critic):
            q = self.critic(features, ResidualPolicy.execute(base, residual)).mean(0)
        return -q.mean(), residual

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        critic, _, features = self.critic_loss(batch, self._next_base(batch))
        actor, _ = self.actor_loss(features, batch.extras["base_action"].to(self.device).float())
        return {"loss/critic": critic, "loss/actor": actor}

    def loss_owners(self) -> dict[str, list]:
        return {"loss/critic": [self.critic] + ([self.encoder] if self.train_encoder else []),
                "loss/actor": [self.pi.actor]}

    # ------------------------------------------------------------------ update
    def update(self, batch: Batch) -> dict[str, float]:
        cfg = self.cfg
        rows = cfg.batch_size * cfg.utd
        if batch.action.shape[0] != rows:
            raise ValueError(f"Residual.update expects batch_size * utd = {rows} rows, got {batch.action.shape[0]}")
        batch = shuffled(batch, self.gen)  # online rows first, demos last in a mixed batch: mix them
        next_base = self._next_base(batch)
        base = batch.extras["base_action"].to(self.device).float()
        metrics: dict[str, Any] = {}
        for part, mini in minibatches(batch, cfg.batch_size, cfg.utd, self.shift, self.gen):
            loss, m, features = self.critic_loss(mini, next_base[part])
            self.critic_opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.critic_opt.param_groups[0]["params"], cfg.max_grad_norm)
            self.critic_opt.step()
            self.critic_updates += 1
            metrics.update(m)
            metrics["loss/critic"] = loss.detach()
            torch._foreach_lerp_(self._polyak[0][0], self._polyak[0][1], cfg.tau)
            if self.critic_updates > cfg.critic_warmup and self.critic_updates % cfg.actor_every == 0:
                actor_loss, residual = self.actor_loss(features, base[part])
                self.actor_opt.zero_grad(set_to_none=True)
                actor_loss.backward()
                nn.utils.clip_grad_norm_(self.pi.actor.parameters(), cfg.max_grad_norm)
                self.actor_opt.step()
                torch._foreach_lerp_(self._polyak[1][0], self._polyak[1][1], cfg.tau)
                self.actor_updates += 1
                metrics.update({"loss/actor": actor_loss.detach(),
                                "residual/abs_mean": residual.detach().abs().mean()})
        values = torch.stack([torch.as_tensor(v).float() for v in metrics.values()]).tolist()
        return {**dict(zip(metrics, values)), "residual/actor_updates": float(self.actor_updates)}

    # ------------------------------------------------------------------ export / checkpoint
    def policy(self) -> ResidualPolicy:
        return self.pi

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.pi.state_dict(), "critic": self.critic.state_dict(),
                "target_critic": self.target_critic.state_dict(), "target_actor": self.target_actor.state_dict(),
                "critic_opt": self.critic_opt.state_dict(), "actor_opt": self.actor_opt.state_dict(),
                "rng": self.gen.get_state(), "noise_rng": {"explore": self.pi.rng.bit_generator.state,
                                                           "warmup": self.warmup_rng.bit_generator.state},
                "counters": {"critic_updates": self.critic_updates, "actor_updates": self.actor_updates}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.pi.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        self.target_critic.load_state_dict(state["target_critic"])
        self.target_actor.load_state_dict(state["target_actor"])
        self.critic_opt.load_state_dict(optimizer_state(state["critic_opt"]))
        self.actor_opt.load_state_dict(optimizer_state(state["actor_opt"]))
        self.gen.set_state(state["rng"].cpu())
        if "noise_rng" in state:
            self.pi.rng.bit_generator.state = state["noise_rng"]["explore"]
            self.warmup_rng.bit_generator.state = state["noise_rng"]["warmup"]
        self.critic_updates = int(state["counters"]["critic_updates"])
        self.actor_updates = int(state["counters"]["actor_updates"])


# ---------------------------------------------------------------------- demonstrations
def relabel_base_actions(replay, policy: ResidualPolicy, envs_at_once: int = 64) -> int:
    """``extras["base_action"]`` of every stored episode = what the base plays when run over
    that episode from its first step with fresh queues (a chunked base is reset at every
    episode boundary, so no action queued in one episode is played in the next). Episodes run
    side by side, ``envs_at_once`` at a time. Returns the number of episodes relabelled."""
    n = len(replay)
    if n == 0:
        return 0
    order = np.lexsort((replay.step[:n], replay.episode_id[:n]))
    ids, starts = np.unique(replay.episode_id[:n][order], return_index=True)
    episodes = np.split(order, starts[1:])
    partial = [int(i) for i, e in zip(ids, episodes) if replay.step[e[0]] != 0]
    if partial:
        log.warning("relabel_base_actions: %d episode(s) lost their first steps (e.g. %d): their base actions "
                    "start from fresh queues mid-episode", len(partial), partial[0])
    out = np.zeros((replay.capacity, replay.action_dim), np.float32)
    for g in range(0, len(episodes), envs_at_once):
        group = episodes[g:g + envs_at_once]
        queues = policy.new_state(len(group))
        for t in range(max(len(e) for e in group)):
            rows = np.array([e[min(t, len(e) - 1)] for e in group])
            actions = queues(replay.obs_at(rows))
            alive = np.array([t < len(e) for e in group])
            out[rows[alive]] = actions[alive]
    replay.set_extras("base_action", np.arange(n), out[:n])
    return len(episodes)


def sparse_demo_rewards(replay) -> None:
    """Reward 1 on each stored episode's last step (made terminal), 0 on every other step."""
    n = len(replay)
    done = replay.terminated[:n] | replay.truncated[:n]
    replay.reward[:n] = done.astype(np.float32)
    replay.labeled[:n] = True
    replay.terminated[:n] = done
    replay.truncated[:n] = False
