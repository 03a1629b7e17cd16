"""Soft Actor-Critic of RLPD / SERL grade, for state or pixel observations.

One ``update(batch)`` call (``batch_size * utd`` rows, e.g. half offline, half online
from :class:`embodied.replay.MixedReplay`):

1. random-shift augmentation of every camera frame (``augment``);
2. ``utd`` critic updates, one per consecutive mini-batch of ``batch_size`` rows (the rows
   shuffled first, so every mini-batch mixes the online and offline halves), each followed
   by a Polyak update of the target critic;
3. one actor and temperature update on the last mini-batch (every ``actor_every`` calls).

TD target: ``reward + discount * (min over num_min random critics of Q_target(s', a')
- alpha * log pi(a'|s'))``. The replay already folds gamma, n-step and termination into
``batch.discount``. The critic ensemble (2..10 members, LayerNorm) runs as batched
matrix products, one ``baddbmm`` per layer for all members.

Encoders (pixels): ``shared`` — one encoder trained by the critic loss, the actor reads
its detached features (DrQ / RLPD); ``separate`` — actor and critic each train their
own; ``frozen`` — one encoder never trained (load pretrained weights into
``learner.policy().encoder`` before training). As in DrQ-v2, next observations are
encoded once, without gradient, by the critic's online encoder for both the next action
and the target Q (the target network holds only the Q heads), and the actor update
reuses the critic's detached features of the last mini-batch: one forward + backward
and one forward pass through the conv encoder per critic update. Each loss term is a
separate method and moves only its own parameters (``tests/test_sac.py``).
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Mapping

import torch
from torch import nn

from embodied.checkpoint import optimizer_state
from embodied.contracts import Batch, Learner
from embodied.learners.hl_gauss import HLGauss
from embodied.learners.nets import ensemble_mlp
from policies.actor import GaussianActor
from policies.encoders import ObsEncoder, RandomShift


@dataclass
class SACConfig:
    hidden: tuple[int, ...] = (256, 256)
    """Hidden layer sizes of the actor and of every critic."""
    num_critics: int = 2
    """Critic ensemble size (RLPD uses 10 with high utd; 2 is classic SAC)."""
    num_min: int = 2
    """Targets take the min over a random subset of this many critics (REDQ); == num_critics is plain min."""
    layer_norm: bool = True
    """LayerNorm after every hidden layer of the critics (RLPD: keeps high-utd training stable)."""
    gamma: float = 0.99
    """Discount. The replay folds it into batch.discount; kept here for whoever builds the replay."""
    tau: float = 0.005
    """Polyak rate of the target critic after every critic update."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor (and its encoder in 'separate' mode)."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critics and their encoder. 3e-4 as RLPD / SB3; CleanRL's 1e-3
    is faster on easy state tasks but less stable with utd > 1."""
    alpha_lr: float = 3e-4
    """Adam learning rate of log(alpha)."""
    init_temperature: float = 1.0
    """Initial entropy temperature alpha."""
    target_entropy: float | None = None
    """Entropy the temperature steers towards; None means -action_dim."""
    batch_size: int = 256
    """Rows per critic update (the loop samples batch_size * utd rows per update call)."""
    utd: int = 1
    """Critic updates per update() call, i.e. per env step (update-to-data ratio)."""
    actor_every: int = 1
    """Actor + temperature update on every actor_every-th update() call (delayed policy updates)."""
    encoder: Literal["shared", "separate", "frozen"] = "shared"
    """Pixel encoder: shared (trained by the critic), separate (one per network) or frozen."""
    augment: bool = True
    """Random-shift augmentation (pad 4, random crop) of camera frames during updates."""
    feature_dim: int = 50
    """Size of the pixel features after the encoder's projection (LayerNorm + tanh)."""
    channels: int = 32
    """Channels of each conv layer of the pixel encoder."""
    critic_head: Literal["mse", "hl_gauss"] = "mse"
    """Critic output: a scalar regressed by MSE, or HL-Gauss logits over ``num_bins`` bins of
    [v_min, v_max] trained by cross-entropy (embodied/learners/hl_gauss.py)."""
    v_min: float = 0.0
    """HL-Gauss: lower end of the value range (targets are clipped into the range)."""
    v_max: float = 100.0
    """HL-Gauss: upper end of the value range (reward in [0, 1], gamma 0.99: at most 100)."""
    num_bins: int = 51
    """HL-Gauss: bins over the value range."""
    hl_sigma: float = 0.75
    """HL-Gauss: std of the target Gaussian, in bin widths."""
    critic_diversity: float = 0.0
    """EDAC's ensemble-diversity weight eta: adds eta * the mean pairwise cosine similarity of the
    members' action gradients dQ_i/da to the critic loss (0: off). With 10 critics and a min over
    all of them it is RAVL's value learning for offline model-based RL."""
    seed: int = 0
    """Seed of the learner's own random generator (action noise, subsets, augmentation)."""
    device: str = "cpu"
    """Torch device of the networks and of incoming batches."""


class Critic(nn.Module):
    """Ensemble of Q networks on encoded features: (features, action) -> (E, B) Q values."""

    def __init__(self, feature_dim: int, action_dim: int, cfg: SACConfig):
        super().__init__()
        self.members = cfg.num_critics
        self.hl = HLGauss(cfg.v_min, cfg.v_max, cfg.num_bins, cfg.hl_sigma) if cfg.critic_head == "hl_gauss" else None
        out = self.hl.num_bins if self.hl is not None else 1
        self.q = ensemble_mlp(cfg.num_critics, [feature_dim + action_dim, *cfg.hidden, out], cfg.layer_norm)

    def outputs(self, features: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """(E, B, 1) scalars or (E, B, num_bins) HL-Gauss logits."""
        x = torch.cat([features, action], -1)
        return self.q(x.expand(self.members, *x.shape))

    def forward(self, features: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        out = self.outputs(features, action)
        return self.hl.value(out) if self.hl is not None else out.squeeze(-1)

    def diversity(self, features: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """EDAC's ensemble-diversity term: the mean over rows of ``1 / (E - 1) * sum_{i != j}
        <g_i, g_j>`` with ``g_i = dQ_i/da / |dQ_i/da|`` (differentiable: it trains the critics
        to disagree on how the value changes with the action)."""
        e = self.members
        a = action.detach().expand(e, *action.shape).clone().requires_grad_(True)
        x = torch.cat([features.expand(e, *features.shape), a], -1)
        out = self.q(x)
        q = self.hl.value(out) if self.hl is not None else out.squeeze(-1)
        (grad,) = torch.autograd.grad(q.sum(), a, create_graph=True)  # (E, B, A): member i's own gradient
        g = grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        gram = torch.einsum("ibk,jbk->bij", g, g)  # (B, E, E)
        off = gram.sum((1, 2)) - torch.diagonal(gram, dim1=1, dim2=2).sum(-1)
        return (off / max(e - 1, 1)).mean()

    def loss(self, features: torch.Tensor, action: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum over members of the mean per-row loss against the (B,) targets -> (loss, (E, B) Q)."""
        out = self.outputs(features, action)
        if self.hl is None:
            q = out.squeeze(-1)
            return (q - target).pow(2).mean(1).sum(), q
        return self.hl.loss(out, target.expand(self.members, -1)).mean(1).sum(), self.hl.value(out)


@contextmanager
def frozen(*modules: nn.Module):
    """Parameters get no gradient inside the block (the actor loss must not touch critics)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class SAC(Learner):
    def __init__(self, obs_space, action_space, cfg: SACConfig | None = None):
        self.cfg = cfg = cfg or SACConfig()
        if not 1 <= cfg.num_min <= cfg.num_critics:
            raise ValueError(f"num_min must be in [1, num_critics={cfg.num_critics}], got {cfg.num_min}")
        if cfg.encoder not in ("shared", "separate", "frozen"):
            raise ValueError(f"encoder must be shared, separate or frozen, got {cfg.encoder!r}")
        if cfg.utd < 1 or cfg.actor_every < 1:
            raise ValueError(f"utd and actor_every must be >= 1, got {cfg.utd} and {cfg.actor_every}")
        spaces = obs_space.spaces
        cams = {c: tuple(s.shape) for c, s in spaces["pixels"].spaces.items()} if "pixels" in spaces else {}
        state_dim = int(spaces["state"].shape[0]) if "state" in spaces else 0
        self.action_dim = int(action_space.shape[0])
        self.device = torch.device(cfg.device)
        self.gen = torch.Generator(self.device).manual_seed(cfg.seed)
        with torch.random.fork_rng(devices=[]):  # initial weights from cfg.seed, caller's RNG untouched
            torch.manual_seed(cfg.seed)
            self.actor = GaussianActor(self.action_dim, state_dim, cams, cfg.hidden, cfg.feature_dim,
                                       cfg.channels).to(self.device)
            self.encoder = self.actor.encoder  # the critic's encoder
            if cfg.encoder == "separate":
                self.encoder = ObsEncoder(state_dim, cams, cfg.feature_dim, cfg.channels).to(self.device)
            self.critic = Critic(self.encoder.out_dim, self.action_dim, cfg).to(self.device)
        self.train_encoder = bool(cams) and cfg.encoder != "frozen"
        self.encoder.requires_grad_(self.train_encoder)
        self.target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(cfg.init_temperature), device=self.device, requires_grad=True)
        self.target_entropy = -float(self.action_dim) if cfg.target_entropy is None else cfg.target_entropy
        self.shift = RandomShift(4) if cams and cfg.augment else None
        actor_params = [p for n, p in self.actor.named_parameters()
                        if cfg.encoder == "separate" or not n.startswith("encoder.")]
        critic_params = [*self.critic.parameters(), *(self.encoder.parameters() if self.train_encoder else [])]
        self.actor_opt = torch.optim.Adam(actor_params, lr=cfg.actor_lr, fused=True)
        self.critic_opt = torch.optim.Adam(critic_params, lr=cfg.critic_lr, fused=True)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr, fused=True)
        self._online, self._targets = list(self.critic.parameters()), list(self.target.parameters())
        self.updates = 0  # update() calls
        self.critic_updates = 0

    # ------------------------------------------------------------------ loss terms
    def critic_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Sum over members of the mean squared TD error (HL-Gauss: the mean cross-entropy against
        the target's binned Gaussian); moves the critics and their encoder.

        Returns (loss, metrics, detached features of ``batch.obs`` for the actor update).
        """
        with torch.no_grad():
            next_features = self.encoder(batch.next_obs)
            actor_next = self.actor.encoder(batch.next_obs) if self.cfg.encoder == "separate" else next_features
            next_action, next_logp = self.actor(actor_next, generator=self.gen)
            q_next = self.target(next_features, next_action)
            subset = torch.randperm(self.cfg.num_critics, generator=self.gen, device=self.device)[: self.cfg.num_min]
            v_next = q_next[subset].min(0).values - self.log_alpha.exp() * next_logp
            target = batch.reward + batch.discount * v_next
        with torch.set_grad_enabled(self.train_encoder and torch.is_grad_enabled()):
            features = self.encoder(batch.obs)
        loss, q = self.critic.loss(features, batch.action, target)
        metrics = {"q/mean": q.mean(), "q/target": target.mean(), "q/std_members": q.std(0).mean()}
        if self.cfg.critic_diversity > 0:
            diversity = self.critic.diversity(features, batch.action)
            loss = loss + self.cfg.critic_diversity * diversity
            metrics["q/diversity"] = diversity.detach()
        return loss, metrics, features.detach()

    def actor_loss(self, obs: Mapping[str, Any],
                   features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """E[alpha * log pi(a|s) - mean_i Q_i(s, a)]; moves the actor only. Returns (loss, log pi).

        ``features``: the critic encoder's (detached) features of ``obs``, when already computed.
        """
        if features is None:
            with torch.no_grad():
                features = self.encoder(obs)
        actor_features = self.actor.encoder(obs) if self.cfg.encoder == "separate" else features
        action, logp = self.actor(actor_features, generator=self.gen)
        with frozen(self.critic):
            q = self.critic(features, action).mean(0)
        return (self.log_alpha.exp().detach() * logp - q).mean(), logp

    def alpha_loss(self, logp: torch.Tensor) -> torch.Tensor:
        """Temperature steers the policy entropy towards target_entropy; moves log_alpha only."""
        return -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The three named terms on ``batch``, as :meth:`update` computes them (no step taken)."""
        critic, _, features = self.critic_loss(batch)
        actor, logp = self.actor_loss(batch.obs, features)
        return {"loss/critic": critic, "loss/actor": actor, "loss/alpha": self.alpha_loss(logp)}

    def loss_owners(self) -> dict[str, list]:
        """Critic: the critics (+ their encoder when trained); actor: its head (+ its own encoder
        when separate); alpha: the temperature."""
        head = [p for n, p in self.actor.named_parameters()
                if self.cfg.encoder == "separate" or not n.startswith("encoder.")]
        return {"loss/critic": [self.critic] + ([self.encoder] if self.train_encoder else []),
                "loss/actor": head, "loss/alpha": [self.log_alpha]}

    @property
    def rows_per_update(self) -> int:
        return self.cfg.batch_size * self.cfg.utd

    # ------------------------------------------------------------------ update
    def _augment(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        return augment(obs, self.shift, self.gen)

    def update(self, batch: Batch) -> dict[str, float]:
        cfg = self.cfg
        rows = cfg.batch_size * cfg.utd
        if batch.action.shape[0] != rows:
            raise ValueError(f"SAC.update expects batch_size * utd = {rows} rows, got {batch.action.shape[0]}")
        metrics: dict[str, torch.Tensor] = {}
        # one mini-batch (utd 1) trains critic and actor on all rows: their order does not matter
        mixed = shuffled(batch, self.gen) if cfg.utd > 1 else batch
        for _, mini in minibatches(mixed, cfg.batch_size, cfg.utd, self.shift, self.gen):
            loss, metrics, features = self.critic_loss(mini)
            self.critic_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.critic_opt.step()
            torch._foreach_lerp_(self._targets, self._online, cfg.tau)
            self.critic_updates += 1
        metrics["loss/critic"] = loss.detach()
        self.updates += 1
        if self.updates % cfg.actor_every == 0:
            actor_loss, logp = self.actor_loss(mini.obs, features)
            alpha_loss = self.alpha_loss(logp)  # on log pi before the actor's step, as in sequence
            self.actor_opt.zero_grad(set_to_none=True)
            self.alpha_opt.zero_grad(set_to_none=True)
            # one backward for both: the actor loss holds alpha detached, the alpha loss log pi
            (actor_loss + alpha_loss).backward()
            self.actor_opt.step()
            self.alpha_opt.step()
            metrics.update({"loss/actor": actor_loss.detach(), "loss/alpha": alpha_loss.detach(),
                            "entropy": -logp.detach().mean()})
        metrics["alpha"] = self.log_alpha.detach().exp()
        values = torch.stack([v.float() for v in metrics.values()]).tolist()
        return dict(zip(metrics, values))

    # ------------------------------------------------------------------ export / checkpoint
    def policy(self) -> GaussianActor:
        return self.actor

    def state_dict(self) -> dict[str, Any]:
        return {"actor": self.actor.state_dict(), "encoder": self.encoder.state_dict(),
                "critic": self.critic.state_dict(), "target": self.target.state_dict(),
                "log_alpha": self.log_alpha.detach().clone(),
                "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "alpha_opt": self.alpha_opt.state_dict(), "rng": self.gen.get_state(),
                "counters": {"updates": self.updates, "critic_updates": self.critic_updates}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.encoder.load_state_dict(state["encoder"])
        self.critic.load_state_dict(state["critic"])
        self.target.load_state_dict(state["target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        for name in ("actor_opt", "critic_opt", "alpha_opt"):
            getattr(self, name).load_state_dict(optimizer_state(state[name]))
        self.gen.set_state(state["rng"].cpu())
        self.updates = int(state["counters"]["updates"])
        self.critic_updates = int(state["counters"]["critic_updates"])


def take_rows(x: Any, index: slice | torch.Tensor) -> Any:
    """Rows ``index`` (a slice or an index tensor) of a nested dict of tensors and
    instruction lists."""
    if isinstance(x, Mapping):
        return {k: take_rows(v, index) for k, v in x.items()}
    if torch.is_tensor(x):
        return x[index if isinstance(index, slice) else index.to(x.device)]
    if isinstance(x, list):
        return x[index] if isinstance(index, slice) else [x[i] for i in index.tolist()]
    return x


def shuffled(batch: Batch, gen: torch.Generator) -> Batch:
    """The batch's rows in a random order: a mixed (RLPD) batch comes online half first, offline
    half last, so without this the consecutive mini-batches of a utd > 1 update (and the actor
    update on the last of them) would each see one half only."""
    perm = torch.randperm(batch.action.shape[0], generator=gen, device=gen.device)
    return Batch(**{name: take_rows(getattr(batch, name), perm) for name in
                    ("obs", "action", "reward", "discount", "next_obs", "is_offline", "intervention")},
                 extras=take_rows(batch.extras or {}, perm))


def augment(obs: Mapping[str, Any], shift: RandomShift | None, gen: torch.Generator) -> dict[str, Any]:
    """Random-shift every camera frame of ``obs`` (``shift`` None: unchanged)."""
    if shift is None:
        return dict(obs)
    return {**obs, "pixels": {c: shift(x, gen) for c, x in obs["pixels"].items()}}


def minibatches(batch: Batch, batch_size: int, utd: int, shift: RandomShift | None, gen: torch.Generator):
    """The ``utd`` consecutive mini-batches of ``batch_size`` rows of a high-UTD update, pixels
    augmented: yields ``(row slice, mini-batch)``."""
    obs, next_obs = augment(batch.obs, shift, gen), augment(batch.next_obs, shift, gen)
    for i in range(utd):
        part = slice(i * batch_size, (i + 1) * batch_size)
        yield part, Batch(obs=take_rows(obs, part), action=batch.action[part], reward=batch.reward[part],
                          discount=batch.discount[part], next_obs=take_rows(next_obs, part))
