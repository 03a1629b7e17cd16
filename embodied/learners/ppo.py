"""Proximal Policy Optimisation (Schulman et al. 2017) with CleanRL's continuous-control defaults.

One iteration of the training loop (``embodied/loop.py``, on-policy path):

1. the policy acts for ``num_steps`` (T) steps in each of ``num_envs`` (N) envs; each step
   stores the observation, the sample, its behaviour log-probability and V(s) (computed at
   rollout time and never recomputed), the reward label, ``terminated``, ``truncated`` and,
   for truncated envs, V of the TRUE final observation (``info["final_obs"]``);
2. :meth:`PPO.update_rollout`: rewards are scaled by the running std of a discounted return
   (SB3 VecNormalize: reset at every episode end, clipped to +-``clip_reward``), then GAE(gamma,
   lambda) over the (T, N) rollout: a truncation bootstraps from V(final obs), a termination
   bootstraps nothing, the last step from V(obs after the rollout);
3. :meth:`PPO.update`: ``update_epochs`` passes over the T*N rows in ``num_minibatches``
   shuffled minibatches; per minibatch the advantages are normalised and one Adam step
   (lr annealed linearly to 0 over the run, gradients clipped to norm ``max_grad_norm``)
   minimises ``loss/policy + vf_coef * loss/value + ent_coef * loss/entropy``:

   ``loss/policy``   clipped surrogate ``mean(max(-A r, -A clip(r, 1 - c, 1 + c)))`` with
                     ``r = pi(a|s) / pi_behaviour(a|s)``; moves the actor (+ log-std, + encoder).
   ``loss/value``    ``0.5 * mean(max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2))``
                     (value clipping; plain MSE with ``clip_vloss=false``); moves the critic (+ encoder).
   ``loss/entropy``  ``-mean(entropy)``; moves the log-std (or the actor when the std is an output).

   With ``target_kl`` set, the epochs stop once an epoch ends with approx KL above it;
4. the states of the rollout are folded into the running observation statistics, which live
   in the policy (``policies/ppo.py``): they are constant during a rollout and its update,
   so the ratio of the first minibatch is exactly 1, and they ship with the policy.

Action bounds: the Gaussian samples an unbounded ``u`` (CleanRL / SB3); the env gets
``clip(u, -1, 1)`` and the learner rescores ``u`` itself (``extras["raw_action"]``). The
categorical head samples one token per action dimension over ``bins`` values in [-1, 1]
(``extras["tokens"]``). Pixels go through the project's conv encoder, shared by actor and
critic (CleanRL's Atari layout) and trained by both losses.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, Mapping

import numpy as np
import torch

from embodied.checkpoint import optimizer_state
from embodied.contracts import Batch, Learner
from embodied.learners.nets import FlatAdam, tree_map
from embodied.replay.rollout import chunk_decisions, gae
from embodied.schema import num
from policies.ppo import PPOPolicy

ROLLOUT_KEYS = ("log_prob", "value", "advantage", "return")


@dataclass
class PPOConfig:
    num_steps: int = num(2048, ge=1)
    """Rollout length T per env; one update per rollout of T * num_envs steps."""
    num_envs: int = num(1, ge=1)
    """Envs stepping together N (configs/learner/ppo.yaml sets it to train.num_envs)."""
    total_steps: int = num(1_000_000, ge=1)
    """Env steps of the run, all envs together: the lr anneals to 0 over them (ppo.yaml: train.total_steps)."""
    num_minibatches: int = num(32, ge=1)
    """Minibatches per epoch; T * N must divide into them."""
    update_epochs: int = num(10, ge=1)
    """Passes over the rollout per update."""
    lr: float = num(3e-4, gt=0)
    """Adam learning rate (eps 1e-5) at the start of the run."""
    anneal_lr: bool = True
    """Anneal the learning rate linearly to 0 over ceil(total_steps / (T * N)) updates."""
    gamma: float = num(0.99, gt=0, le=1)
    """Discount of GAE and of the return the reward scaling tracks."""
    gae_lambda: float = num(0.95, ge=0, le=1)
    """GAE's lambda."""
    clip_coef: float = num(0.2, gt=0)
    """Surrogate clipping range c (and the value clipping range)."""
    clip_vloss: bool = True
    """Clip the value update around the rollout's values (CleanRL, PPO2)."""
    norm_adv: bool = True
    """Normalise advantages per minibatch to mean 0, std 1."""
    ent_coef: float = num(0.0, ge=0)
    """Weight of the entropy bonus (loss/entropy)."""
    vf_coef: float = num(0.5, ge=0)
    """Weight of loss/value."""
    max_grad_norm: float = num(0.5, gt=0)
    """Global gradient norm clip of every Adam step."""
    target_kl: float | None = num(None, gt=0)
    """Stop the epochs once an epoch ends with approx KL above this (null: never)."""
    normalize_obs: bool = True
    """Normalise states with running statistics (kept in, and shipped with, the policy)."""
    normalize_reward: bool = True
    """Scale rewards by the running std of the discounted return (SB3 VecNormalize)."""
    clip_obs: float = num(10.0, gt=0)
    """Normalised states are clipped to +-clip_obs."""
    clip_reward: float = num(10.0, gt=0)
    """Scaled rewards are clipped to +-clip_reward."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden sizes of the actor and critic MLPs (tanh, orthogonal init)."""
    head: Literal["gaussian", "categorical"] = "gaussian"
    """Action head: diagonal Gaussian, or one categorical per action dimension (action tokens)."""
    bins: int = num(256, ge=2)
    """Values per action dimension of the categorical head, linspace(-1, 1, bins) (a Box action
    space; a discrete task's MultiDiscrete sizes replace it)."""
    state_dependent_std: bool = False
    """Gaussian: the std is an actor output (True) or a free parameter per dimension (False)."""
    init_log_std: float = 0.0
    """Gaussian: initial log-std."""
    feature_dim: int = num(50, ge=1)
    """Pixel features after the encoder's projection (pixel observations only)."""
    channels: int = num(32, ge=1)
    """Channels of each conv layer of the pixel encoder."""
    critic_warmup: int = num(0, ge=0)
    """Updates at the start that train the value only (a fine-tuned policy's fresh value head
    learns before the policy moves; VLA-RL's critic warm-up)."""
    temperature: float | None = num(None, gt=0)
    """Token sampling temperature of a fine-tuned policy (``policy=``), used to sample AND to
    score the ratio; null keeps the policy's own."""
    flow_noise_level: float = num(0.5, gt=0)
    """A fine-tuned flow VLA (SmolVLA, pi0): the flow SDE's noise level a
    (sigma_t = a * sqrt(t / (1 - t)); RLinf / Flow-GRPO use 0.5)."""
    seed: int = 0
    """Seed of the initial weights and of the minibatch shuffling."""
    device: str = "cpu"
    """Torch device of the networks and of the update."""

    def __post_init__(self):
        rows = self.num_steps * self.num_envs
        if rows % self.num_minibatches:
            raise ValueError(f"a rollout of learner.num_steps x num_envs = {self.num_steps} x {self.num_envs} = {rows} "
                             f"steps does not split into learner.num_minibatches={self.num_minibatches} equal minibatches")


def clipped_surrogate(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantage: torch.Tensor,
                      clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean(max(-A r, -A clip(r, 1 - clip, 1 + clip)))`` with ``r = exp(log_prob - old_log_prob)``
    -> (loss, r). Where the clipped side is the larger one, the row has no gradient."""
    ratio = (log_prob - old_log_prob).exp()
    loss = torch.max(-advantage * ratio, -advantage * ratio.clamp(1.0 - clip, 1.0 + clip)).mean()
    return loss, ratio


def clipped_value_loss(value: torch.Tensor, old_value: torch.Tensor, returns: torch.Tensor,
                       clip: float | None) -> torch.Tensor:
    """``0.5 * mean(max((V - R)^2, (V_old + clip(V - V_old, -clip, clip) - R)^2))``; plain
    ``0.5 * MSE`` when ``clip`` is None."""
    loss = (value - returns).pow(2)
    if clip is not None:
        clipped = old_value + (value - old_value).clamp(-clip, clip)
        loss = torch.max(loss, (clipped - returns).pow(2))
    return 0.5 * loss.mean()


class PPO(Learner):
    on_policy = True
    discrete_actions = True

    def __init__(self, obs_space, action_space, cfg: PPOConfig | None = None, policy=None, policy_source: str | None = None):
        """``policy``: a loaded policy to fine-tune instead of a fresh actor-critic (``policy=``
        on the command line): a saved :class:`policies.vla.native.NativeVLA` (token log-probs),
        or a LeRobot SmolVLA / pi0 (:class:`policies.vla.flow_rl.FlowVLAActorCritic`: flow-SDE
        log-probs, a value head on its prefix, the executed chunk as one decision)."""
        self.cfg = cfg = cfg or PPOConfig()
        spaces = obs_space.spaces
        self.device = torch.device(cfg.device)
        self.gen = torch.Generator().manual_seed(cfg.seed)  # minibatch shuffling
        self.policy_source = policy_source
        if policy is not None:
            self.net = check_finetune_policy(policy, obs_space, action_space, cfg).to(self.device)
            if cfg.temperature is not None:
                self.net.temperature = float(cfg.temperature)
        else:
            if cfg.temperature is not None:
                raise ValueError("learner.temperature applies to a fine-tuned token policy (policy=<saved VLA>); "
                                 "PPO's own actor samples at temperature 1")
            nvec = check_action_space(action_space, cfg.head)
            cams = {c: tuple(s.shape) for c, s in spaces["pixels"].spaces.items()} if "pixels" in spaces else {}
            state_dim = int(spaces["state"].shape[0]) if "state" in spaces else 0
            with torch.random.fork_rng(devices=[]):  # initial weights from cfg.seed, caller's RNG untouched
                torch.manual_seed(cfg.seed)
                self.net = PPOPolicy(int(action_space.shape[0]), state_dim, cams, cfg.hidden, cfg.head, cfg.bins,
                                     cfg.state_dependent_std, cfg.init_log_std, cfg.normalize_obs, cfg.clip_obs,
                                     cfg.feature_dim, cfg.channels, nvec=nvec).to(self.device)
        self.reads_instruction = hasattr(self.net, "instruction_ids")
        self.chunked = int(getattr(self.net, "chunk_size", 1)) > 1  # a flow VLA: the chunk is the decision
        if self.chunked:
            played = int(getattr(self.net, "n_action_steps", self.net.chunk_size))
            decisions = math.ceil(cfg.num_steps / played) * cfg.num_envs
            if decisions < cfg.num_minibatches:
                raise ValueError(f"learner.num_steps={cfg.num_steps} env steps per env play {played}-step chunks: "
                                 f"{decisions} chunk decisions per rollout do not fill learner.num_minibatches="
                                 f"{cfg.num_minibatches}; raise num_steps or lower num_minibatches")
        self.opt = FlatAdam(self.net.parameters(), lr=cfg.lr, eps=1e-5, max_grad_norm=cfg.max_grad_norm)
        self.return_stats = np.array([0.0, 1.0, 1e-4])  # running mean, var, count of the discounted return
        self.returns = np.zeros(cfg.num_envs)  # discounted return of each env's running episode
        self.updates = 0

    @property
    def rows_per_update(self) -> int:
        return self.cfg.num_steps * self.cfg.num_envs

    def episodes_restarted(self, envs) -> None:
        """Envs ``envs`` start new episodes without a done (a replaced rollout worker's): their
        running discounted returns (reward scaling) restart."""
        self.returns[list(envs)] = 0.0

    # ------------------------------------------------------------------ rollout -> batch
    def scale_rewards(self, reward: np.ndarray, done: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """(T, N) rewards / sqrt(var(discounted return) + 1e-8), clipped, in time order (SB3
        VecNormalize: the return restarts at every episode end, the statistics run on).
        ``mask`` (T, N): only these rows count (each env's rows in time order; the others get 0)."""
        out = np.zeros(reward.shape, np.float32)
        mean, var, count = self.return_stats
        for t in range(len(reward)):
            on = slice(None) if mask is None else mask[t]
            if mask is not None and not on.any():
                continue
            self.returns[on] = self.returns[on] * self.cfg.gamma + reward[t][on]
            batch = self.returns[on]
            b_mean, b_var, n = batch.mean(), batch.var(), len(batch)
            delta, total = b_mean - mean, count + n
            var = (var * count + b_var * n + delta ** 2 * count * n / total) / total
            mean, count = mean + delta * n / total, total
            out[t][on] = np.clip(reward[t][on] / math.sqrt(var + 1e-8), -self.cfg.clip_reward, self.cfg.clip_reward)
            self.returns[np.asarray(done[t]) & (True if mask is None else mask[t])] = 0.0
        self.return_stats = np.array([mean, var, count])
        return out

    def update_rollout(self, rollout, last_value: np.ndarray) -> dict[str, float]:
        """Train on a full :class:`embodied.replay.RolloutBuffer`; ``last_value`` is V(obs after it).

        The rows of ``rollout.mask`` train (all of them, unless episode labels are still out:
        then each env's resolved prefix, see embodied/replay/rollout.py)."""
        cfg, d = self.cfg, rollout.data
        mask = rollout.mask
        ragged = not mask.all()
        rows = int(mask.sum())
        if rows < cfg.num_minibatches:
            raise ValueError(f"a rollout with {rows} trainable steps does not fill learner.num_minibatches="
                             f"{cfg.num_minibatches} minibatches (the loop carries such a rollout instead)")
        reward = d["reward"]
        if cfg.normalize_reward:
            reward = self.scale_rewards(reward, d["terminated"] | d["truncated"], mask if ragged else None)
        metrics = {"rollout/trained_steps": float(rows), "rollout/carried_in": float(rollout.carried.sum())}
        if self.chunked:  # one decision per chunk drawn (a semi-MDP; see chunk_decisions)
            adv, ret, train = self._decision_gae(rollout, reward, last_value)
            ragged, rows = True, int(train.sum())
            metrics["rollout/decisions"] = float(rows)
            if rows < cfg.num_minibatches:
                raise ValueError(f"a rollout with {rows} chunk decisions does not fill learner.num_minibatches="
                                 f"{cfg.num_minibatches} minibatches: lengthen learner.num_steps or use fewer")
        else:
            adv, ret = gae(reward, d["value"], d["terminated"], d["truncated"], d["final_value"],
                           np.asarray(last_value, np.float32), cfg.gamma, cfg.gae_lambda, lengths=rollout.length)
            train = mask
        obs = {k: v for k, v in d["obs"].items() if k in ("state", "pixels")}
        if self.reads_instruction:  # strings -> ids into the policy's table of instructions, (rows, N)
            texts = [row if row is not None else [None] * cfg.num_envs for row in d["obs"]["instruction"]]
            unique = sorted({s for row in texts for s in row if s is not None})
            ids = dict(zip(unique, self.net.instruction_ids(unique).tolist()))
            obs["instruction"] = np.array([[ids.get(s, 0) for s in row] for row in texts], np.int64)
        flat = {"obs": obs, "action": d["action"],
                "reward": reward, "extras": {**d["extras"], "log_prob": d["log_prob"], "value": d["value"],
                                             "advantage": adv, "return": ret}}
        pick = (lambda x: x[train]) if ragged else (lambda x: x.reshape(-1, *x.shape[2:]))
        t = tree_map(lambda x: torch.as_tensor(pick(x), device=self.device), flat)
        metrics.update(self.update(Batch(obs=t["obs"], action=t["action"], reward=t["reward"], discount=None,
                                         next_obs={}, extras=t["extras"])))
        metrics["reward/rollout_mean"] = float(d["reward"][mask].mean())
        return metrics

    def _decision_gae(self, rollout, reward: np.ndarray, last_value) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """GAE over the chunk decisions of a chunked policy's rollout, written back at the rows
        the chunks were drawn at -> (advantage, return, the decision rows that train)."""
        d, cfg = rollout.data, self.cfg
        dec = chunk_decisions(d["extras"]["chunk_index"], reward, d["terminated"], d["truncated"], d["final_value"],
                              rollout.length, cfg.gamma)
        cols = np.broadcast_to(np.arange(rollout.num_envs), dec.rows.shape)
        real = dec.rows >= 0
        value = np.zeros(dec.rows.shape, np.float32)
        value[real] = d["value"][dec.rows[real], cols[real]]
        adv_d, ret_d = gae(dec.reward, value, dec.terminated, dec.truncated, dec.final_value,
                           np.asarray(last_value, np.float32), dec.discount, cfg.gae_lambda, lengths=dec.lengths)
        adv, ret = np.zeros(reward.shape, np.float32), np.zeros(reward.shape, np.float32)
        adv[dec.rows[real], cols[real]], ret[dec.rows[real], cols[real]] = adv_d[real], ret_d[real]
        drawn = np.zeros(reward.shape, bool)
        drawn[dec.rows[real], cols[real]] = True
        return adv, ret, rollout.mask & drawn

    # ------------------------------------------------------------------ loss terms
    def _rollout_rows(self, batch: Batch) -> dict[str, Any]:
        """What the loss reads from a rollout batch: observations, the sample, stored columns."""
        missing = [k for k in ROLLOUT_KEYS if k not in batch.extras]
        if missing:
            raise ValueError(f"PPO trains on rollout batches: batch.extras lacks {missing} "
                             "(the training loop builds them with update_rollout)")
        ex = batch.extras
        if "flow_path" in ex:  # a flow VLA's chunk: its packed denoising path
            sample = ex["flow_path"]
        elif self.cfg.head == "categorical":
            sample = ex["tokens"] if "tokens" in ex else self.net.tokens_of(batch.action.to(self.device))
        else:
            sample = ex["raw_action"] if "raw_action" in ex else batch.action
        keys = ("state", "pixels", "instruction") if self.reads_instruction else ("state", "pixels")
        obs = {k: tree_map(lambda x: x.to(self.device), v) for k, v in batch.obs.items() if k in keys}
        if self.reads_instruction and not isinstance(obs.get("instruction"), torch.Tensor):
            raise ValueError("PPO over a VLA trains on instruction ids (update_rollout builds them); "
                             "the batch has no obs['instruction'] tensor")
        rows = {"obs": obs, "sample": sample.to(self.device)}
        rows.update({k: ex[k].to(self.device).float() for k in ROLLOUT_KEYS})
        return rows

    def _terms(self, rows: Mapping[str, Any], diagnostics: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
        """The named loss terms of one minibatch (+ approx KL and clip fraction when asked)."""
        cfg = self.cfg
        if hasattr(self.net, "evaluate"):  # a flow VLA: log-prob of the stored path, V, (constant) entropy
            log_prob, value, entropy = self.net.evaluate(rows["obs"], rows["sample"])
        else:
            feats = self.net.features(rows["obs"])
            params = self.net.dist_params(feats)
            log_prob, value, entropy = self.net.log_prob(params, rows["sample"]), self.net.value_of(feats), None
        adv = rows["advantage"]
        if cfg.norm_adv and adv.numel() > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        policy_loss, ratio = clipped_surrogate(log_prob, rows["log_prob"], adv, cfg.clip_coef)
        value_loss = clipped_value_loss(value, rows["value"], rows["return"], cfg.clip_coef if cfg.clip_vloss else None)
        entropy = (self.net.entropy(params) if entropy is None else entropy).mean()
        info = {}
        if diagnostics:
            with torch.no_grad():
                info = {"approx_kl": ((ratio - 1) - (log_prob - rows["log_prob"])).mean(),
                        "clipfrac": ((ratio - 1).abs() > cfg.clip_coef).float().mean()}
        return {"loss/policy": policy_loss, "loss/value": value_loss, "loss/entropy": -entropy}, info

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The three named terms on a rollout batch, as one minibatch of :meth:`update` computes them."""
        return self._terms(self._rollout_rows(batch))[0]

    def loss_owners(self) -> dict[str, list]:
        """Policy: actor (+ log-std) (+ the shared encoder); value: critic (+ encoder);
        entropy: the log-std, or the actor (+ encoder) when the std or logits come from it."""
        net = self.net
        enc = getattr(net, "encoder", None)  # an autoregressive VLA has none: its LM is the actor
        encoder = [enc] if enc is not None and getattr(enc, "cameras", None) else []
        log_std = [net.log_std] if net.log_std is not None else []
        value_encoder = [] if getattr(net, "value_reads_detached", False) else encoder
        return {"loss/policy": [net.actor, *log_std, *encoder], "loss/value": [net.critic, *value_encoder],
                "loss/entropy": log_std or [net.actor, *encoder]}

    # ------------------------------------------------------------------ update
    def learning_rate(self) -> float:
        """Linear annealing: lr * (1 - updates / number of updates in the run), as CleanRL."""
        if not self.cfg.anneal_lr:
            return self.cfg.lr
        total = math.ceil(self.cfg.total_steps / self.rows_per_update)
        return self.cfg.lr * max(1.0 - self.updates / total, 0.0)

    def update(self, batch: Batch) -> dict[str, float]:
        """``update_epochs`` epochs of minibatch steps on one rollout (T * N rows)."""
        cfg = self.cfg
        rows = self._rollout_rows(batch)
        n = int(rows["log_prob"].shape[0])
        if n < cfg.num_minibatches:
            raise ValueError(f"PPO.update got {n} rows, fewer than learner.num_minibatches={cfg.num_minibatches}")
        lr = self.learning_rate()
        self.opt.set_lr(lr)
        # equal minibatches of a whole rollout; a ragged one (episode labels still out) near-equal
        bounds = [round(i * n / cfg.num_minibatches) for i in range(cfg.num_minibatches + 1)]
        history, last, epochs = [], [], 0
        warming = self.updates < cfg.critic_warmup
        for epochs in range(1, cfg.update_epochs + 1):
            order = torch.randperm(n, generator=self.gen).to(self.device)
            shuffled = tree_map(lambda x: x[order], rows)  # one gather per epoch; minibatches are slices
            for start, stop in zip(bounds[:-1], bounds[1:]):
                end_of_epoch = stop == n
                terms, info = self._terms(tree_map(lambda x: x[start:stop], shuffled), diagnostics=end_of_epoch)
                loss = cfg.vf_coef * terms["loss/value"]
                if not warming:  # critic warm-up: the value alone trains
                    loss = loss + terms["loss/policy"] + cfg.ent_coef * terms["loss/entropy"]
                grad_norm = self.opt.step(loss)  # zero, backward, clip to max_grad_norm, Adam
                history.append(torch.stack([*terms.values(), grad_norm]).detach())
            last.append(torch.stack(list(info.values())))
            if cfg.target_kl is not None and float(info["approx_kl"]) > cfg.target_kl:
                break
        self.updates += 1
        if cfg.normalize_obs and "state" in rows["obs"] and hasattr(self.net, "obs_rms"):
            self.net.obs_rms.update(rows["obs"]["state"])  # a fine-tuned policy keeps its stored statistics
        out = dict(zip([*terms, "grad_norm"], torch.stack(history).mean(0).tolist()))
        out.update(zip(info, torch.stack(last).mean(0).tolist()))  # at the end of each epoch
        ret, value = rows["return"], rows["value"]
        out.update({"lr": lr, "epochs": float(epochs), "critic_warmup": float(warming),
                    "explained_variance": float(1 - (ret - value).var() / ret.var()) if ret.var() > 0 else float("nan")})
        if self.net.log_std is not None:
            out["std"] = float(self.net.log_std.detach().exp().mean())
        return out

    # ------------------------------------------------------------------ export / checkpoint
    def policy(self) -> PPOPolicy:
        return self.net

    def state_dict(self) -> dict[str, Any]:
        return {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.cfg).items()},
                "net": self.net.state_dict(), "opt": self.opt.state_dict(), "rng": self.gen.get_state(),
                "return_stats": self.return_stats.copy(), "returns": self.returns.copy(), "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(optimizer_state(state["opt"]))
        self.gen.set_state(state["rng"].cpu())
        self.return_stats = np.asarray(state["return_stats"], np.float64).copy()
        self.returns = np.asarray(state["returns"], np.float64).copy()
        self.updates = int(state["updates"])


def check_finetune_policy(policy, obs_space, action_space, cfg: PPOConfig):
    """A loaded policy PPO can fine-tune: a token policy (categorical head, a value head), one
    action per step, fitting the env; one-line errors otherwise."""
    from policies.base import check_base
    from policies.vla.flow_rl import FlowVLAActorCritic, is_flow_vla

    if is_flow_vla(policy):  # a LeRobot SmolVLA / pi0: a value head on its prefix, sampled along the flow SDE
        policy = FlowVLAActorCritic(base=policy, noise_level=cfg.flow_noise_level, critic_hidden=cfg.hidden,
                                    seed=cfg.seed)
    if isinstance(policy, FlowVLAActorCritic):
        if cfg.temperature is not None:
            raise ValueError("learner.temperature applies to token policies; a flow VLA's exploration is "
                             "learner.flow_noise_level")
        check_action_space(action_space, "gaussian")
        check_base(policy, obs_space, action_space, "policy")
        policy.requires_grad_(True)
        policy.train()
        return policy
    missing = [m for m in ("features", "dist_params", "log_prob", "value_of", "tokens_of") if not hasattr(policy, m)]
    if missing or getattr(policy, "head", None) != "categorical":
        raise ValueError(f"policy={getattr(policy, 'kind', type(policy).__name__)} cannot be fine-tuned by PPO: it is "
                         "neither a token policy with a value head (a saved native VLA) nor a LeRobot flow VLA "
                         "(SmolVLA, pi0)")
    if int(getattr(policy, "chunk_size", 1)) != 1:
        raise ValueError(f"PPO fine-tunes one action per step, but the policy predicts chunks of "
                         f"{policy.chunk_size}: behaviour-clone it with learner.chunk=1")
    if cfg.head != "categorical":
        raise ValueError("a fine-tuned token policy needs learner.head=categorical")
    check_action_space(action_space, "categorical")
    check_base(policy, obs_space, action_space, "policy")
    if hasattr(policy, "requires_grad_"):
        policy.requires_grad_(True)
    policy.train()
    return policy


def check_action_space(space, head: str) -> list[int] | None:
    """The contract's flat [-1, 1] Box (either head) or a discrete task's MultiDiscrete (the
    categorical head; returns its sizes); a one-line error for anything else."""
    import gymnasium as gym

    if isinstance(space, gym.spaces.MultiDiscrete) and len(space.shape) == 1:
        if head != "categorical":
            raise ValueError(f"PPO's {head} head cannot represent the discrete actions {space}: set "
                             "learner.head=categorical (one categorical per action dimension)")
        return [int(n) for n in space.nvec]
    if isinstance(space, gym.spaces.Discrete):
        raise ValueError(f"got {space}: PPO takes discrete actions as MultiDiscrete([n]) "
                         "(envs.core.discrete_action_space, as the gym adapter builds them)")
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise ValueError(f"PPO's {head} head needs a flat Box action space in [-1, 1], got {space}")
    if not (np.all(space.low == -1.0) and np.all(space.high == 1.0)):
        raise ValueError(f"PPO's {head} head acts in the contract's [-1, 1] action box, got low {space.low.min()} "
                         f"high {space.high.max()}: map the env's units onto [-1, 1] in its adapter")
    return None
