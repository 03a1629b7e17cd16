"""``learner=world_model``: one world-model learner, five objectives (``learner.objective``).

**Latent objectives on pixels** (``recon``, ``repo``, ``infopower``; :class:`LatentWorldModel`).
One :meth:`update` takes ``batch_size`` windows of ``sequence_length`` steps
(:class:`embodied.replay.SequenceSampler`; the loop samples them) and makes

1. one step of the world model (encoder, RSSM, reward and continuation heads, plus the
   objective's own parts: the decoder for ``recon``, the bilinear critic and the inverse
   dynamics for ``infopower``) on the objective (``embodied/world_models/objectives.py``), and
   one step of its dual variable (RePo's beta, InfoPower's lambda);
2. one step of the actor and of the critic in imagination (Dreamer): from every posterior of
   the batch, ``horizon`` (15) steps of the prior with the actor's actions; rewards from the
   reward head (InfoPower: plus the inverse-dynamics log-likelihood, its empowerment bonus),
   discounts ``gamma * p(continue)``; lambda-returns (0.95) bootstrapped with a slowly moving
   target critic; the actor maximises them by backpropagating through the frozen model
   (``- entropy_coef * log pi`` as a small entropy bonus), the critic regresses them;
3. for ``repo`` / ``infopower``, one step of a pixel decoder on DETACHED latents: a probe of
   what the latent holds (imagined-rollout videos), which never shapes it.

``updates_per_step`` (1 / ``train_every``) tells the loop how many updates each env step owes.

**State objectives** (``mle``, ``vagram``; :class:`MBPOWorldModel`, Janner et al. 2019): an
ensemble of ``ensemble`` MLPs (``elites`` kept) predicting delta state, reward and continuation,
retrained for ``model_train_steps`` steps every ``model_every`` updates on the whole replay
(attached by the loop), branched rollouts of ``rollout_length`` from ``rollout_batch`` replay
states with the SAC actor feeding a model buffer, and the project's SAC trained on
``real_ratio`` real and the rest model transitions. ``mle`` fits the ensemble by Gaussian NLL;
``vagram`` by the value-gradient weighted loss (Voelcker et al. 2022), its gradients cached per
replay slot and cleared at every retrain.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Literal, Mapping

import numpy as np
import torch
from torch import nn

from embodied.checkpoint import optimizer_state
from embodied.contracts import Batch, Learner
from embodied.learners.sac import SAC, SACConfig, frozen
from embodied.schema import num
from embodied.world_models import objectives as O
from embodied.world_models.nets import ConvDecoder, EnsembleDynamics, Latent, frames_target, mlp
from policies.world_model import LatentPolicy

LATENT = ("recon", "repo", "infopower")
STATE = ("mle", "vagram")
DEFAULT_BALANCE = {"recon": 0.8, "repo": 5 / 6, "infopower": 5 / 6}


@dataclass
class WorldModelConfig:
    objective: Literal["recon", "repo", "infopower", "mle", "vagram"] = "repo"
    """recon | repo | infopower (a latent model of camera frames) or mle | vagram (an MLP ensemble of states, MBPO)."""
    # -- latent model ---------------------------------------------------------------------------
    sequence_length: int = num(50, ge=2)
    """Steps per training window (RePo: 50); must not exceed the env's episodes."""
    batch_size: int = num(50, ge=1)
    """Windows per update (latent) / SAC rows per critic update (state)."""
    train_every: int = num(5, ge=1)
    """Env steps per update (latent objectives)."""
    embed: int = num(256, ge=1)
    """Encoder features per observation (the project's conv encoder, projected)."""
    depth: int = num(32, ge=1)
    """Channels of the encoder's convs and the decoder's first width unit."""
    deter: int = num(200, ge=1)
    """RSSM belief size (RePo 200)."""
    stoch: int = num(30, ge=1)
    """RSSM stochastic size (RePo 30)."""
    hidden: int = num(200, ge=1)
    """RSSM hidden layer size (RePo 200)."""
    head_hidden: tuple[int, ...] = (400, 400)
    """Hidden sizes of the reward, continuation and value heads."""
    actor_hidden: tuple[int, ...] = (400, 400, 400, 400)
    """Hidden sizes of the imagination actor."""
    model_lr: float = num(3e-4, gt=0)
    """Adam lr of the world model (latent), or of the ensemble (state: 1e-3 in configs)."""
    actor_lr: float = num(8e-5, gt=0)
    critic_lr: float = num(8e-5, gt=0)
    grad_clip: float = num(100.0, gt=0)
    """Gradient-norm clip of the world model, actor and critic steps."""
    horizon: int = num(15, ge=1)
    """Imagination horizon."""
    gamma: float = num(0.99, gt=0, le=1)
    lam: float = num(0.95, ge=0, le=1)
    """Lambda of the imagined lambda-returns."""
    entropy_coef: float = num(1e-4, ge=0)
    """Weight of the actor's entropy bonus in imagination."""
    target_tau: float = num(0.02, gt=0, le=1)
    """Polyak rate of the target critic (per update)."""
    kl_balance: float | None = num(None, ge=0, le=1)
    """KL balance a (null: 0.8 for recon, 5/6 for repo and infopower)."""
    free_nats: float = num(1.0, ge=0)
    """recon: the KL term is max(KL, free_nats)."""
    kl_target: float = num(3.0, gt=0)
    """repo: the dual variable holds the KL at this many nats."""
    beta_init: float = num(1e-5, gt=0)
    """repo: initial KL multiplier beta."""
    dual_lr: float = num(1e-4, gt=0)
    """Adam lr of log beta (repo) / log lambda (infopower)."""
    info_c0: float = -3.0
    """infopower: the constraint -KL + log q(a|z',z) + log q(r|z) >= c0 (nats)."""
    lambda_init: float = num(1.0, gt=0)
    """infopower: initial Lagrange multiplier."""
    empowerment_bonus: float = num(1.0, ge=0)
    """infopower: weight of the inverse-dynamics log-likelihood added to imagined rewards."""
    probe: bool = True
    """repo / infopower: train a pixel decoder on detached latents (videos, probes)."""
    # -- MBPO (state objectives) ------------------------------------------------------------
    ensemble: int = num(7, ge=1)
    elites: int = num(5, ge=1)
    model_hidden: tuple[int, ...] = (200, 200, 200, 200)
    model_every: int = num(250, ge=1)
    """Updates (= env steps) between model retrains; the VaGraM cache is cleared at each."""
    model_train_steps: int = num(200, ge=1)
    """Gradient steps of the ensemble per retrain."""
    model_batch: int = num(256, ge=1)
    """Rows per member per ensemble step."""
    rollout_batch: int = num(400, ge=1)
    """Model rollouts started per update (MBPO: 400 per env step)."""
    rollout_length: int = num(1, ge=1)
    model_retain: int = num(1, ge=1)
    """Model-buffer capacity in retrain periods of rollouts."""
    real_ratio: float = num(0.05, ge=0, le=1)
    """Fraction of each SAC batch from the real replay."""
    sac_utd: int = num(20, ge=1)
    """SAC critic updates per update() (MBPO: 20)."""
    sac_hidden: tuple[int, ...] = (256, 256)
    sac_lr: float = num(3e-4, gt=0)
    sac_critics: int = num(2, ge=2)
    """SAC's critic ensemble (RAVL, offline: 10)."""
    sac_num_min: int = num(2, ge=1)
    """Targets take the min over this many critics (RAVL: all of them)."""
    sac_diversity: float = num(0.0, ge=0)
    """EDAC's ensemble-diversity weight of SAC's critics (RAVL: > 0; embodied/learners/sac.py)."""
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        if self.elites > self.ensemble:
            raise ValueError(f"learner.elites={self.elites} exceeds learner.ensemble={self.ensemble}")


class WorldModel(Learner):
    """``learner=world_model``: a :class:`LatentWorldModel` or a :class:`MBPOWorldModel` by objective."""

    def __new__(cls, obs_space, action_space, cfg: WorldModelConfig | None = None):
        if cls is WorldModel:
            cfg = cfg or WorldModelConfig()
            cls = LatentWorldModel if cfg.objective in LATENT else MBPOWorldModel
        return super().__new__(cls)


# ============================================================================ latent objectives
class LatentWorldModel(WorldModel):
    def __init__(self, obs_space, action_space, cfg: WorldModelConfig | None = None):
        self.cfg = cfg = cfg or WorldModelConfig()
        spaces = obs_space.spaces
        if "pixels" not in spaces:
            raise ValueError(f"objective={cfg.objective} learns a latent model of camera frames, but the learner reads "
                             f"{sorted(spaces)}: set env.pixels=true and learner.inputs=[pixels] (objective=mle or "
                             "vagram models a state vector)")
        cams = {c: tuple(s.shape) for c, s in spaces["pixels"].spaces.items()}
        state_dim = int(spaces["state"].shape[0]) if "state" in spaces else 0
        self.action_dim = int(action_space.shape[0])
        self.device = torch.device(cfg.device)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.balance = DEFAULT_BALANCE[cfg.objective] if cfg.kl_balance is None else cfg.kl_balance
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.agent = LatentPolicy(self.action_dim, state_dim, cams, cfg.embed, cfg.depth, cfg.deter, cfg.stoch,
                                      cfg.hidden, cfg.actor_hidden).to(self.device)
            feat = self.agent.rssm.feat_dim
            self.reward_head = mlp(feat, cfg.head_hidden, 1).to(self.device)
            self.cont_head = mlp(feat, cfg.head_hidden, 1).to(self.device)
            self.critic = mlp(feat, cfg.head_hidden, 1).to(self.device)
            self.decoder = ConvDecoder(feat, cams, cfg.depth).to(self.device) if cfg.objective == "recon" or cfg.probe else None
            self.inverse = O.InverseDynamics(feat, self.action_dim, cfg.hidden).to(self.device)
            if cfg.objective == "infopower":
                self.nce_w = nn.Parameter(torch.randn(feat, self.agent.encoder.out_dim, device=self.device) * 0.01)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.dual = None
        if cfg.objective == "repo":
            self.dual = O.Dual(cfg.beta_init, cfg.dual_lr).to(self.device)
        elif cfg.objective == "infopower":
            self.dual = O.Dual(cfg.lambda_init, cfg.dual_lr).to(self.device)
        self.model_opt = torch.optim.Adam(self.model_parameters(), lr=cfg.model_lr)
        self.actor_opt = torch.optim.Adam(self.agent.actor.parameters(), lr=cfg.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.probe_opt = (torch.optim.Adam(self.decoder.parameters(), lr=cfg.model_lr)
                          if self.decoder is not None and cfg.objective != "recon" else None)
        # recon / repo: q(a_t | z_t, z_t+1) on detached latents (what RePo's test-time adaptation checks
        # the adapted encoder against); infopower trains it as its empowerment term
        self.inverse_opt = (torch.optim.Adam(self.inverse.parameters(), lr=cfg.model_lr)
                            if cfg.objective != "infopower" else None)
        self.adapting = False
        self.updates = 0

    # -- what the loop reads ----------------------------------------------------------------
    @property
    def sequence_length(self) -> int:
        return self.cfg.sequence_length

    @property
    def updates_per_step(self) -> float:
        return 1.0 / self.cfg.train_every

    def model_modules(self) -> list:
        mods = [self.agent.encoder, self.agent.rssm, self.reward_head, self.cont_head]
        if self.cfg.objective == "recon":
            mods.append(self.decoder)
        if self.cfg.objective == "infopower":
            mods += [self.nce_w, self.inverse]
        return mods

    def model_parameters(self) -> list:
        out = []
        for m in self.model_modules():
            out += list(m.parameters()) if isinstance(m, nn.Module) else [m]
        return out

    # -- the world model's objective ----------------------------------------------------------
    def _observe(self, batch: Mapping[str, Any]):
        embed = self._embed(self.agent.encoder, batch)
        posts, priors = self.agent.rssm.observe(embed, batch["action"].to(self.device).float())
        return embed, posts, priors

    def model_terms(self, batch: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], Latent, torch.Tensor, dict]:
        """The world model's loss (``loss/model``) and its parts, the posteriors (B, L + 1) and
        the mask of real steps (B, L)."""
        cfg = self.cfg
        embed, posts, priors = self._observe(batch)
        mask = batch["mask"].to(self.device).float()
        n = mask.sum().clamp_min(1.0)
        nxt = posts.map(lambda x: x[:, 1:])
        feat = nxt.feat
        reward = batch["reward"].to(self.device).float()
        cont = 1.0 - batch["terminated"].to(self.device).float()
        reward_nll = (O.gaussian_nll(self.reward_head(feat), reward[..., None]) * mask).sum() / n
        cont_nll = (O.bce_logits(self.cont_head(feat).squeeze(-1), cont) * mask).sum() / n
        kl = (O.balanced_kl(nxt, priors, self.balance) * mask).sum() / n
        parts = {"reward_nll": reward_nll, "cont_nll": cont_nll, "kl": kl}
        if cfg.objective == "recon":
            recon = self._recon_nll(posts.feat, batch, self.decoder)
            parts["recon_nll"] = recon
            loss = recon + reward_nll + cont_nll + torch.clamp(kl, min=cfg.free_nats)
        elif cfg.objective == "repo":
            loss = reward_nll + cont_nll + self.dual.value * (kl - cfg.kl_target)
        else:  # infopower
            valid = torch.cat([torch.ones_like(mask[:, :1]), mask], 1).bool()  # (B, L + 1) real observations
            nce = O.info_nce(posts.feat[valid], embed[valid], self.nce_w)
            action = batch["action"].to(self.device).float()
            emp = (self.inverse.log_prob(posts.feat[:, :-1], feat, action) * mask).sum() / n
            constraint = -kl + emp - reward_nll - cont_nll
            parts.update({"nce": nce, "empowerment": emp, "constraint": constraint})
            loss = -nce - self.dual.value * (constraint - cfg.info_c0)
        parts["loss/model"] = loss
        return parts, posts, mask, {"embed": embed}

    def _recon_nll(self, feat: torch.Tensor, batch: Mapping[str, Any], decoder: ConvDecoder) -> torch.Tensor:
        """Unit-variance Gaussian NLL of every camera's frames (summed over pixels), mean over real steps."""
        mask = batch["mask"].to(self.device).float()
        valid = torch.cat([torch.ones_like(mask[:, :1]), mask], 1)
        pred = decoder(feat)
        total = 0.0
        for cam, img in pred.items():
            target = frames_target(batch["obs"]["pixels"][cam].to(self.device))
            total = total + (O.gaussian_nll(img.flatten(2), target.flatten(2)) * valid).sum() / valid.sum()
        return total

    def dual_violation(self, parts: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """RePo: KL - eps (beta rises while the KL is above its target); InfoPower: c0 - C."""
        if self.cfg.objective == "repo":
            return parts["kl"] - self.cfg.kl_target
        if self.cfg.objective == "infopower":
            return self.cfg.info_c0 - parts["constraint"]
        return None

    # -- behaviour in imagination ------------------------------------------------------------
    def imagine(self, start: Latent) -> dict[str, torch.Tensor]:
        """``horizon`` prior steps from ``start`` (N rows, detached) with the actor: features
        (H + 1, N, F), actions and log-probs (H, N, .), rewards and discounts (H, N). Reads
        nothing but the start states and the model."""
        rssm, state = self.agent.rssm, start.detach()
        feats, actions, logps = [state.feat], [], []
        for _ in range(self.cfg.horizon):
            action, logp = self.agent.actor(state.feat.detach())
            state = rssm.prior(rssm.transition(state, action))
            feats.append(state.feat)
            actions.append(action)
            logps.append(logp)
        feats = torch.stack(feats)
        reward = self.reward_head(feats[1:]).squeeze(-1)
        if self.cfg.objective == "infopower" and self.cfg.empowerment_bonus:
            reward = reward + self.cfg.empowerment_bonus * self.inverse.log_prob(feats[:-1], feats[1:],
                                                                                 torch.stack(actions))
        discount = self.cfg.gamma * torch.sigmoid(self.cont_head(feats[1:]).squeeze(-1))
        return {"feat": feats, "action": torch.stack(actions), "logp": torch.stack(logps), "reward": reward,
                "discount": discount}

    def behaviour_terms(self, posts: Latent, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """``loss/actor`` (moves the actor only: the model is frozen, gradients flow through it)
        and ``loss/critic`` on imagination from every real posterior of the batch."""
        valid = torch.cat([torch.ones_like(mask[:, :1]), mask], 1).bool()
        start = posts.detach().map(lambda x: x[valid])
        with frozen(*[m for m in self.model_modules() if isinstance(m, nn.Module)], self.critic, self.target_critic):
            nce_w = getattr(self, "nce_w", None)
            if nce_w is not None:
                nce_w.requires_grad_(False)
            try:
                im = self.imagine(start)
                value = self.target_critic(im["feat"]).squeeze(-1)
                returns = O.lambda_returns(im["reward"], value, im["discount"], self.cfg.lam)
            finally:
                if nce_w is not None:
                    nce_w.requires_grad_(True)
        weight = torch.cumprod(torch.cat([torch.ones_like(im["discount"][:1]), im["discount"][:-1]]), 0).detach()
        actor = -(weight * (returns + self.cfg.entropy_coef * -im["logp"])).mean()
        pred = self.critic(im["feat"][:-1].detach()).squeeze(-1)
        critic = 0.5 * (weight * (pred - returns.detach()) ** 2).mean()
        return {"loss/actor": actor, "loss/critic": critic, "imagined_return": returns.mean().detach()}

    # -- the learner contract -----------------------------------------------------------------
    def losses(self, batch) -> dict[str, torch.Tensor]:
        parts, posts, mask, _ = self.model_terms(batch)
        out = {"loss/model": parts["loss/model"]}
        out.update({k: v for k, v in self.behaviour_terms(posts, mask).items() if k.startswith("loss/")})
        if self.probe_opt is not None:
            out["loss/probe"] = self._recon_nll(posts.feat.detach(), batch, self.decoder)
        if self.inverse_opt is not None:
            out["loss/inverse"] = self._inverse_nll(posts.detach(), batch)
        if self.dual is not None:
            out["loss/dual"] = self.dual.loss(self.dual_violation(parts))
        return out

    def _inverse_nll(self, posts: Latent, batch: Mapping[str, Any]) -> torch.Tensor:
        """``-log q(a_t | z_t, z_t+1)`` over the real steps of the windows."""
        mask = batch["mask"].to(self.device).float()
        action = batch["action"].to(self.device).float()
        nll = -self.inverse.log_prob(posts.feat[:, :-1], posts.feat[:, 1:], action)
        return (nll * mask).sum() / mask.sum().clamp_min(1.0)

    def loss_owners(self) -> dict[str, list]:
        owners = {"loss/model": self.model_modules(), "loss/actor": [self.agent.actor], "loss/critic": [self.critic]}
        if self.probe_opt is not None:
            owners["loss/probe"] = [self.decoder]
        if self.inverse_opt is not None:
            owners["loss/inverse"] = [self.inverse]
        if self.dual is not None:
            owners["loss/dual"] = [self.dual.log_beta]
        return owners

    @property
    def rows_per_update(self) -> int:
        return self.cfg.batch_size

    def _step(self, opt, loss, params) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        opt.step()
        return norm

    def update(self, batch) -> dict[str, float]:
        cfg = self.cfg
        if self.adapting:
            return self.adapt(batch)
        with torch.random.fork_rng(devices=[]):  # the learner's own randomness: resumes exactly
            torch.set_rng_state(self.gen.get_state())
            parts, posts, mask, _ = self.model_terms(batch)
            model_norm = self._step(self.model_opt, parts["loss/model"], self.model_parameters())
            metrics = {k: v.detach() for k, v in parts.items()}
            metrics["grad_norm/model"] = model_norm
            violation = self.dual_violation(parts)
            if violation is not None:
                metrics["loss/dual"] = self.dual.update(violation)
                metrics["dual"] = self.dual.value
            behaviour = self.behaviour_terms(posts, mask)
            self.actor_opt.zero_grad(set_to_none=True)
            self.critic_opt.zero_grad(set_to_none=True)
            behaviour["loss/actor"].backward()
            torch.nn.utils.clip_grad_norm_(self.agent.actor.parameters(), cfg.grad_clip)
            self.actor_opt.step()
            self._step(self.critic_opt, behaviour["loss/critic"], list(self.critic.parameters()))
            with torch.no_grad():
                for t, s in zip(self.target_critic.parameters(), self.critic.parameters()):
                    t.lerp_(s, cfg.target_tau)
            metrics.update({k: v.detach() for k, v in behaviour.items()})
            if self.probe_opt is not None:
                probe = self._recon_nll(posts.feat.detach(), batch, self.decoder)
                self._step(self.probe_opt, probe, list(self.decoder.parameters()))
                metrics["loss/probe"] = probe.detach()
            if self.inverse_opt is not None:
                inverse = self._inverse_nll(posts.detach(), batch)
                self._step(self.inverse_opt, inverse, list(self.inverse.parameters()))
                metrics["loss/inverse"] = inverse.detach()
            self.gen.set_state(torch.get_rng_state())
        self.updates += 1
        return {k: float(v) for k, v in metrics.items()}

    # -- RePo's test-time adaptation -----------------------------------------------------------
    def start_adaptation(self, source_replay) -> None:
        """Adapt to a new visual domain without rewards (RePo): from now on :meth:`update` trains only
        the encoder (a copy of the source's; the source encoder is kept frozen) so that (1) a
        discriminator cannot tell its embeddings of the new domain's frames from the source
        encoder's embeddings of ``source_replay``'s frames, and (2) the frozen model stays
        consistent on the new domain: its prior predicts the new posteriors (KL) and its inverse
        dynamics recovers the actions taken from them. Everything else is frozen."""
        from embodied.replay import SequenceSampler

        if self.cfg.objective != "repo":
            raise ValueError(f"test-time adaptation (train.adapt_from) is RePo's: the source run must be objective=repo, "
                             f"not {self.cfg.objective}")
        if len(source_replay) == 0:
            raise ValueError("train.adapt_from: the source run's replay is empty")
        self.adapting = True
        self.source_windows = SequenceSampler(source_replay, self.cfg.sequence_length,
                                              rng=np.random.default_rng(self.cfg.seed + 7))
        self.source_encoder = copy.deepcopy(self.agent.encoder).requires_grad_(False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed + 7)
            self.discriminator = mlp(self.agent.encoder.out_dim, (256, 256), 1).to(self.device)
        self.adapt_opt = torch.optim.Adam(self.agent.encoder.parameters(), lr=self.cfg.model_lr)
        self.disc_opt = torch.optim.Adam(self.discriminator.parameters(), lr=self.cfg.model_lr)

    def _embed(self, encoder, batch: Mapping[str, Any]) -> torch.Tensor:
        """``encoder`` over every observation of a window batch -> (B, L + 1, E)."""
        obs = batch["obs"]
        b, l1 = batch["action"].shape[0], batch["action"].shape[1] + 1
        flat = {}
        if "pixels" in obs:
            flat["pixels"] = {c: x.to(self.device).reshape(b * l1, *x.shape[2:]) for c, x in obs["pixels"].items()}
        if "state" in obs and encoder.state_dim:
            flat["state"] = obs["state"].to(self.device).float().reshape(b * l1, -1)
        return encoder(flat).view(b, l1, -1)

    def adapt(self, batch) -> dict[str, float]:
        """One adaptation step on a window batch of the new domain (its rewards are not read)."""
        bce = nn.functional.binary_cross_entropy_with_logits
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.gen.get_state())
            source = self.source_windows.sample_torch(batch["action"].shape[0], self.device)
            mask = batch["mask"].to(self.device).float()
            valid = torch.cat([torch.ones_like(mask[:, :1]), mask], 1).bool()
            src_valid = torch.cat([torch.ones_like(source["mask"][:, :1]), source["mask"]], 1).bool().to(self.device)
            with torch.no_grad():
                e_src = self._embed(self.source_encoder, source)[src_valid]
            e_new = self._embed(self.agent.encoder, batch)
            d_src, d_new = self.discriminator(e_src), self.discriminator(e_new[valid].detach())
            disc = bce(d_src, torch.ones_like(d_src)) + bce(d_new, torch.zeros_like(d_new))
            self._step(self.disc_opt, disc, list(self.discriminator.parameters()))
            frozen_parts = [self.agent.rssm, self.inverse, self.discriminator]
            with frozen(*frozen_parts):
                fool = self.discriminator(e_new[valid])
                fool = bce(fool, torch.ones_like(fool))
                posts, priors = self.agent.rssm.observe(e_new, batch["action"].to(self.device).float())
                n = mask.sum().clamp_min(1.0)
                kl = (O.kl_gauss(posts.mean[:, 1:], posts.std[:, 1:], priors.mean, priors.std) * mask).sum() / n
                inverse = self._inverse_nll(posts, batch)
                loss = fool + kl + inverse
                self._step(self.adapt_opt, loss, list(self.agent.encoder.parameters()))
            self.gen.set_state(torch.get_rng_state())
        self.updates += 1
        accuracy = 0.5 * ((d_src > 0).float().mean() + (d_new < 0).float().mean())
        return {"adapt/discriminator": float(disc), "adapt/fool": float(fool), "adapt/kl": float(kl),
                "adapt/inverse_nll": float(inverse), "adapt/discriminator_accuracy": float(accuracy)}

    # -- diagnostics ---------------------------------------------------------------------------
    @torch.no_grad()
    def imagined_frames(self, window: Mapping[str, Any], context: int = 5) -> np.ndarray | None:
        """One window: the first ``context`` steps filtered, the rest predicted open loop from the
        real actions; (T, H, 2W, 3) uint8 frames, real | decoded (None without a decoder)."""
        if self.decoder is None:
            return None
        _, posts, _ = self._observe(window)
        action = window["action"].to(self.device).float()
        state = posts.map(lambda x: x[:, min(context, action.shape[1]) - 1])
        feats = [posts.feat[:, t] for t in range(min(context, action.shape[1]))]
        for t in range(len(feats) - 1, action.shape[1]):
            state = self.agent.rssm.prior(self.agent.rssm.transition(state, action[:, t]), sample=False)
            feats.append(state.feat)
        cam = next(iter(self.decoder.cameras))
        pred = self.decoder(torch.stack(feats, 1))[cam][0]
        real = window["obs"]["pixels"][cam][0].to(self.device)
        pred = ((pred + 0.5).clamp(0, 1) * 255).to(torch.uint8)
        length = int(window["mask"][0].sum()) + 1
        return torch.cat([real[:length], pred[:length]], 2).cpu().numpy()

    # -- export / checkpoint ------------------------------------------------------------------
    def policy(self) -> LatentPolicy:
        return self.agent

    def state_dict(self) -> dict[str, Any]:
        out = {"config": _plain(asdict(self.cfg)), "agent": self.agent.state_dict(),
               "reward_head": self.reward_head.state_dict(), "cont_head": self.cont_head.state_dict(),
               "critic": self.critic.state_dict(), "target_critic": self.target_critic.state_dict(),
               "model_opt": self.model_opt.state_dict(), "actor_opt": self.actor_opt.state_dict(),
               "critic_opt": self.critic_opt.state_dict(), "rng": self.gen.get_state(), "updates": self.updates}
        if self.decoder is not None:
            out["decoder"] = self.decoder.state_dict()
        if self.probe_opt is not None:
            out["probe_opt"] = self.probe_opt.state_dict()
        out["inverse"] = self.inverse.state_dict()
        if self.inverse_opt is not None:
            out["inverse_opt"] = self.inverse_opt.state_dict()
        if self.cfg.objective == "infopower":
            out["nce_w"] = self.nce_w.detach().clone()
        if self.dual is not None:
            out["dual"], out["dual_opt"] = self.dual.state_dict(), self.dual.opt.state_dict()
        if self.adapting:
            out["adaptation"] = {"source_encoder": self.source_encoder.state_dict(),
                                 "discriminator": self.discriminator.state_dict(),
                                 "adapt_opt": self.adapt_opt.state_dict(), "disc_opt": self.disc_opt.state_dict(),
                                 "source_rng": json_rng(self.source_windows._rng)}
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name in ("agent", "reward_head", "cont_head", "critic", "target_critic"):
            getattr(self, name).load_state_dict(state[name])
        for name in ("model_opt", "actor_opt", "critic_opt"):
            getattr(self, name).load_state_dict(optimizer_state(state[name]))
        if self.decoder is not None:
            self.decoder.load_state_dict(state["decoder"])
        if self.probe_opt is not None:
            self.probe_opt.load_state_dict(optimizer_state(state["probe_opt"]))
        self.inverse.load_state_dict(state["inverse"])
        if self.inverse_opt is not None and "inverse_opt" in state:
            self.inverse_opt.load_state_dict(optimizer_state(state["inverse_opt"]))
        if self.cfg.objective == "infopower":
            with torch.no_grad():
                self.nce_w.copy_(state["nce_w"])
        if self.adapting and "adaptation" in state:  # resuming an adaptation run (the source's state has none)
            a = state["adaptation"]
            self.source_encoder.load_state_dict(a["source_encoder"])
            self.discriminator.load_state_dict(a["discriminator"])
            self.adapt_opt.load_state_dict(optimizer_state(a["adapt_opt"]))
            self.disc_opt.load_state_dict(optimizer_state(a["disc_opt"]))
            self.source_windows._rng = rng_from_json(a["source_rng"])
        if self.dual is not None:
            self.dual.load_state_dict(state["dual"])
            self.dual.opt.load_state_dict(optimizer_state(state["dual_opt"]))
        self.gen.set_state(state["rng"].cpu())
        self.updates = int(state["updates"])


def _plain(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# ============================================================================ state objectives (MBPO)
class MBPOWorldModel(WorldModel):
    K = 4  # VaGraM's value functions: both critics and both targets

    def __init__(self, obs_space, action_space, cfg: WorldModelConfig | None = None):
        self.cfg = cfg = cfg or WorldModelConfig(objective="mle")
        spaces = obs_space.spaces
        if "pixels" in spaces or "state" not in spaces:
            raise ValueError(f"objective={cfg.objective} models the state vector (MBPO): set learner.inputs=[state] "
                             "(objective=recon, repo or infopower learn a latent model of camera frames)")
        self.state_dim, self.action_dim = int(spaces["state"].shape[0]), int(action_space.shape[0])
        self.device = torch.device(cfg.device)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.sac = SAC(obs_space, action_space, SACConfig(
            hidden=cfg.sac_hidden, batch_size=cfg.batch_size, utd=cfg.sac_utd, gamma=cfg.gamma, actor_lr=cfg.sac_lr,
            critic_lr=cfg.sac_lr, alpha_lr=cfg.sac_lr, num_critics=cfg.sac_critics, num_min=cfg.sac_num_min,
            critic_diversity=cfg.sac_diversity, seed=cfg.seed, device=cfg.device))
        # SAC's parts as this learner's own (what each loss term moves, checkpoints)
        self.actor, self.critic, self.target, self.log_alpha = (self.sac.actor, self.sac.critic, self.sac.target,
                                                               self.sac.log_alpha)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.model = EnsembleDynamics(self.state_dim, self.action_dim, cfg.ensemble, cfg.model_hidden).to(self.device)
        self.model_opt = torch.optim.Adam(self.model.parameters(), lr=cfg.model_lr, weight_decay=1e-5)
        self.elite_idx = torch.arange(cfg.elites)
        cap = cfg.rollout_batch * cfg.rollout_length * cfg.model_every * cfg.model_retain
        d, a = self.state_dim, self.action_dim
        self.buffer = {"state": torch.zeros(cap, d), "action": torch.zeros(cap, a), "reward": torch.zeros(cap),
                       "next_state": torch.zeros(cap, d), "cont": torch.zeros(cap)}
        self.buffer_size, self.buffer_next = 0, 0
        self.replay = None
        self._sampler = None
        self.cache: torch.Tensor | None = None  # (replay capacity, K, D) value gradients
        self.cache_valid: torch.Tensor | None = None
        self.retrains = 0
        self.updates = 0

    # -- what the loop gives -------------------------------------------------------------------
    def attach_replay(self, replay) -> None:
        """The online replay: the ensemble's training rows and the rollouts' start states."""
        from embodied.replay.nstep import NStepSampler

        self.replay = replay
        self._sampler = NStepSampler(replay, n_step=1, gamma=1.0, rng=np.random.default_rng(self.cfg.seed + 1))
        if self.cache is None or self.cache.shape[0] != replay.capacity:
            self.cache = torch.zeros(replay.capacity, self.K, self.state_dim)
            self.cache_valid = torch.zeros(replay.capacity, dtype=torch.bool)

    @property
    def rows_per_update(self) -> int:
        rows = self.cfg.batch_size * self.cfg.sac_utd
        return max(1, int(round(self.cfg.real_ratio * rows)))

    # -- the ensemble ---------------------------------------------------------------------------
    def _real(self, n: int) -> dict[str, torch.Tensor]:
        b = self._sampler.sample(n)
        return {"state": torch.as_tensor(b["obs"]["state"]).float(), "action": torch.as_tensor(b["action"]).float(),
                "reward": torch.as_tensor(b["reward"]).float(),
                "next_state": torch.as_tensor(b["next_obs"]["state"]).float(),
                "cont": torch.as_tensor(b["discount"] > 0).float(), "slot": torch.as_tensor(b["slot"])}

    def value_grads(self, next_state: torch.Tensor) -> torch.Tensor:
        """(B, K, D): ``dQ_k(s', mu(s')) / ds'`` for SAC's critics and their targets (K = 4 with two
        critics). Each member gets its own copy of ``s'``, so one backward pass per ensemble gives
        every member's gradient."""
        b, d = next_state.shape
        with torch.no_grad():
            mean_action, _ = self.sac.actor(self.sac.encoder({"state": next_state}), deterministic=True)
        grads = []
        for critic in (self.sac.critic, self.sac.target):
            e = critic.members
            s = next_state.detach().expand(e, b, d).clone().requires_grad_(True)
            feats = self.sac.encoder({"state": s.reshape(e * b, d)}).view(e, b, -1)
            out = critic.q(torch.cat([feats, mean_action.expand(e, b, -1)], -1))
            q = critic.hl.value(out) if critic.hl is not None else out.squeeze(-1)
            (g,) = torch.autograd.grad(q.sum(), s)
            grads.append(g)
        return torch.cat(grads)[: self.K].transpose(0, 1).contiguous()

    def cached_grads(self, slots: torch.Tensor, next_state: torch.Tensor) -> torch.Tensor:
        """Value gradients of these replay slots: cached since the last retrain, else computed now and cached."""
        fresh = ~self.cache_valid[slots]
        if fresh.any():
            self.cache[slots[fresh]] = self.value_grads(next_state[fresh])
            self.cache_valid[slots[fresh]] = True
        return self.cache[slots]

    def model_loss(self, rows: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``rows`` (E, B, ...): one bootstrap draw per member."""
        mean, logvar, cont = self.model(rows["state"], rows["action"])
        delta = rows["next_state"] - rows["state"]
        target = torch.cat([delta, rows["reward"][..., None]], -1)
        cont_loss = O.bce_logits(cont, rows["cont"]).mean()
        if self.cfg.objective == "mle":
            bound = 0.01 * (self.model.max_logvar.sum() - self.model.min_logvar.sum())
            return O.ensemble_nll(mean, logvar, target) + bound + cont_loss
        e, b, d = delta.shape
        grads = self.cached_grads(rows["slot"].reshape(-1), rows["next_state"].reshape(-1, d)).view(e, b, self.K, d)
        err = mean[..., :d] - delta
        loss = ((grads * err[:, :, None, :]) ** 2).mean(2).mean() + ((mean[..., d] - rows["reward"]) ** 2).mean()
        if self.retrains == 1:  # VaGraM: plain MSE during the first training only
            loss = loss + ((mean - target) ** 2).mean()
        return loss + cont_loss

    def retrain(self) -> dict[str, float]:
        """Refit the ensemble on the replay (the VaGraM cache is cleared first), pick the elites."""
        cfg, e = self.cfg, self.cfg.ensemble
        self.retrains += 1
        if self.cache_valid is not None:
            self.cache_valid[:] = False
        sample = self._real(max(1000, cfg.model_batch))
        self.model.set_normaliser(torch.cat([sample["state"], sample["action"]], -1))
        for _ in range(cfg.model_train_steps):
            flat = self._real(e * cfg.model_batch)
            rows = {k: v.view(e, cfg.model_batch, *v.shape[1:]) for k, v in flat.items()}
            loss = self.model_loss(rows)
            self.model_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.model_opt.step()
        with torch.no_grad():  # elites by one-step MSE on fresh rows
            held = self._real(max(1000, cfg.model_batch))
            mean, _, _ = self.model(held["state"], held["action"])
            target = torch.cat([held["next_state"] - held["state"], held["reward"][:, None]], -1)
            mse = ((mean - target) ** 2).mean((1, 2))
            self.elite_idx = mse.argsort()[: cfg.elites]
        return {"loss/model": float(loss.detach()), "model/mse": float(mse[self.elite_idx].mean()),
                "model/value_error": self.value_error(held, mean[self.elite_idx, :, : self.state_dim].mean(0))}

    @torch.no_grad()
    def value_error(self, rows: Mapping[str, torch.Tensor], pred_delta: torch.Tensor) -> float:
        """Mean ``|V(s') - V(s_hat')|`` over ``rows`` with ``V(x) = mean_k Q_k(x, mu(x))`` of SAC's critics:
        the value error the model's next states induce (what VaGraM's loss targets)."""
        def value(state):
            feats = self.sac.encoder({"state": state})
            action, _ = self.sac.actor(feats, deterministic=True)
            return self.sac.critic(feats, action).mean(0)

        return float((value(rows["next_state"]) - value(rows["state"] + pred_delta)).abs().mean())

    @torch.no_grad()
    def rollout(self) -> None:
        """``rollout_batch`` branched rollouts of ``rollout_length`` into the model buffer."""
        cfg = self.cfg
        state = self._real(cfg.rollout_batch)["state"]
        for _ in range(cfg.rollout_length):
            action, _ = self.sac.actor(self.sac.encoder({"state": state}), generator=self.sac.gen)
            mean, logvar, cont = self.model(state, action)
            pick = self.elite_idx[torch.randint(len(self.elite_idx), (state.shape[0],), generator=self.gen)]
            rows = torch.arange(state.shape[0])
            mean, logvar, cont = mean[pick, rows], logvar[pick, rows], cont[pick, rows]
            if cfg.objective == "mle":  # a sample of the member's Gaussian (MBPO)
                mean = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=self.gen)
            nxt = state + mean[:, : self.state_dim]
            self._push(state, action, mean[:, self.state_dim], nxt, (cont > 0).float())
            state = nxt

    def _push(self, state, action, reward, next_state, cont) -> None:
        n, cap = state.shape[0], self.buffer["state"].shape[0]
        idx = (self.buffer_next + torch.arange(n)) % cap
        for k, v in (("state", state), ("action", action), ("reward", reward), ("next_state", next_state),
                     ("cont", cont)):
            self.buffer[k][idx] = v
        self.buffer_next = int((self.buffer_next + n) % cap)
        self.buffer_size = min(self.buffer_size + n, cap)

    def _sac_batch(self, real: Batch) -> Batch:
        cfg = self.cfg
        rows = cfg.batch_size * cfg.sac_utd
        n_real = min(real.action.shape[0], rows)
        idx = torch.randint(self.buffer_size, (rows - n_real,), generator=self.gen)
        b = {k: v[idx] for k, v in self.buffer.items()}
        cat = lambda a, m: torch.cat([a.to(self.device), m.to(self.device)])  # noqa: E731
        return Batch(obs={"state": cat(real.obs["state"][:n_real], b["state"])},
                     action=cat(real.action[:n_real], b["action"]), reward=cat(real.reward[:n_real], b["reward"]),
                     discount=cat(real.discount[:n_real], cfg.gamma * b["cont"]),
                     next_obs={"state": cat(real.next_obs["state"][:n_real], b["next_state"])})

    # -- the learner contract -------------------------------------------------------------------
    def update(self, batch: Batch) -> dict[str, float]:
        if self.replay is None:
            raise ValueError("objective=mle / vagram trains its model on the whole replay: call attach_replay(replay) "
                             "first (the training loop does)")
        metrics: dict[str, float] = {}
        if self.updates % self.cfg.model_every == 0:
            metrics.update(self.retrain())
        self.rollout()
        metrics.update(self.sac.update(self._sac_batch(batch)))
        metrics.update({"model/buffer": float(self.buffer_size), "model/retrains": float(self.retrains)})
        self.updates += 1
        return metrics

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        e = self.cfg.ensemble
        flat = self._real(e * 8)
        rows = {k: v.view(e, 8, *v.shape[1:]) for k, v in flat.items()}
        out = {"loss/model": self.model_loss(rows)}
        out.update(self.sac.losses(batch))
        return out

    def loss_owners(self) -> dict[str, list]:
        return {"loss/model": [self.model], **self.sac.loss_owners()}

    def policy(self):
        return self.sac.actor

    def state_dict(self) -> dict[str, Any]:
        return {"config": _plain(asdict(self.cfg)), "sac": self.sac.state_dict(), "model": self.model.state_dict(),
                "model_opt": self.model_opt.state_dict(), "elites": self.elite_idx.clone(),
                "buffer": {k: v.clone() for k, v in self.buffer.items()},
                "buffer_size": self.buffer_size, "buffer_next": self.buffer_next, "rng": self.gen.get_state(),
                "np_rng": json_rng(self.rng), "sampler_rng": json_rng(self._sampler._rng) if self._sampler else None,
                "cache": self.cache.clone() if self.cache is not None else None,
                "cache_valid": self.cache_valid.clone() if self.cache_valid is not None else None,
                "retrains": self.retrains, "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sac.load_state_dict(state["sac"])
        self.model.load_state_dict(state["model"])
        self.model_opt.load_state_dict(optimizer_state(state["model_opt"]))
        self.elite_idx = state["elites"].clone()
        self.buffer = {k: v.clone() for k, v in state["buffer"].items()}
        self.buffer_size, self.buffer_next = int(state["buffer_size"]), int(state["buffer_next"])
        self.gen.set_state(state["rng"].cpu())
        self.rng = rng_from_json(state["np_rng"])
        if state.get("sampler_rng") is not None and self._sampler is not None:
            self._sampler._rng = rng_from_json(state["sampler_rng"])
        if state.get("cache") is not None:
            self.cache, self.cache_valid = state["cache"].clone(), state["cache_valid"].clone()
        self.retrains, self.updates = int(state["retrains"]), int(state["updates"])


def json_rng(rng: np.random.Generator) -> str:
    import json

    return json.dumps(rng.bit_generator.state)


def rng_from_json(text: str) -> np.random.Generator:
    import json

    rng = np.random.default_rng()
    rng.bit_generator.state = json.loads(text)
    return rng
