"""A LeRobot flow VLA (SmolVLA, pi0) as an actor-critic PPO fine-tunes (``learner=ppo
policy=<LeRobot checkpoint folder or hub id>``).

    net = FlowVLAActorCritic(base=LeRobotPolicy(folder))   # or FlowVLAActorCritic(source=folder)
    step = net.step(obs)        # (B, chunk, A) chunk, log-prob of its random parts, V(s), packed path

**The decision is the chunk.** The env plays the first ``n_action_steps`` actions of each
chunk (the checkpoint's own setting; the chunk executor), and PPO treats the chunk as one
action of a semi-MDP (``learner.update_rollout``): its reward is the discounted sum over the
steps it played, it bootstraps with ``gamma ** steps``. The chunk is sampled along the flow SDE
(:class:`policies.vla.flow_sde.FlowSDE`) with noise on the positions the env plays only
(``stochastic = n_action_steps``); the others follow their mean, so the log-probability is the
exact likelihood of the whole chunk and the ratio is exactly 1 before an update.
``deterministic`` acting is LeRobot's ODE from zero noise (what ``embodied-eval`` plays).

**The critic.** LeRobot's flow VLAs have no value head. V(s) is an MLP (tanh, orthogonal init,
as PPO's own critic) on the prefix's pooled features: the VLM's last hidden states averaged
over the valid image, instruction and state tokens, computed in the same pass that caches the
prefix for the denoising steps. The value loss does not reach the VLM (its features are
detached for the critic), so the policy loss alone moves the VLA; with ``learner.critic_warmup``
the value head learns first.

**What trains:** what the checkpoint's own recipe trains (SmolVLA's ``train_expert_only`` /
``freeze_vision_encoder``, pi0's ``freeze_vision_encoder``), plus the value head. The model
runs in eval mode during updates, as during rollouts (no dropout at LeRobot's defaults).

Saved as ``{"kind": "flow_vla", "source": ..., ...}`` plus the LeRobot model's weights and the
value head's: :func:`policies.load_policy` rebuilds it from the source checkpoint (its config
and processors) and loads the fine-tuned weights.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from embodied.contracts import Obs, PolicyStep
from policies.vla.flow_sde import FAMILIES, FlowSDE


def is_flow_vla(policy: Any) -> bool:
    """A loaded LeRobot policy whose type is a flow VLA (SmolVLA, pi0)."""
    from policies.lerobot_policy import LeRobotPolicy

    return isinstance(policy, LeRobotPolicy) and getattr(policy.config, "type", None) in FAMILIES


def _prefix_width(model) -> int:
    inner = model.model
    if model.config.type == "smolvla":
        return int(inner.vlm_with_expert.config.text_config.hidden_size)
    return int(inner.paligemma_with_expert.paligemma.config.text_config.hidden_size)


class FlowVLAActorCritic(nn.Module):
    kind = "flow_vla"
    head = "flow"
    log_std = None  # PPO: no free log-std; the SDE's noise schedule is fixed
    value_reads_detached = True

    def __init__(self, source: str | None = None, noise_level: float = 0.5,
                 critic_hidden: Sequence[int] = (256, 256), seed: int = 0, device: str = "cpu", base=None):
        super().__init__()
        from policies.ppo import tanh_mlp

        if base is None:
            if not source:
                raise ValueError("a flow_vla policy needs the LeRobot checkpoint it was fine-tuned from (source=)")
            from policies.lerobot_policy import LeRobotPolicy

            base = LeRobotPolicy(source, device=device)
        if not is_flow_vla(base):
            raise ValueError(f"PPO fine-tunes LeRobot flow VLAs ({', '.join(FAMILIES)}); policy {base.source} is a "
                             f"{getattr(base.config, 'type', '?')!r} checkpoint")
        self.base, self.source = base, base.source
        self.noise_level, self.critic_hidden, self.seed = float(noise_level), tuple(int(h) for h in critic_hidden), seed
        self.actor = base.model
        self.chunk_size, self.n_action_steps = base.chunk_size, base.n_action_steps
        self.sde = FlowSDE(base.model, noise_level=noise_level, stochastic=self.n_action_steps)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.critic = tanh_mlp([_prefix_width(base.model), *self.critic_hidden, 1], out_gain=1.0)
        self.critic.to(base.device)
        self._gen = torch.Generator(base.device).manual_seed(seed)
        self._texts: dict[str, int] = {}  # instruction -> id (PPO stores ids in its rollout tensors)
        self._by_id: list[str] = []

    # -- the contract ------------------------------------------------------------------------
    def io(self) -> dict[str, Any]:
        return self.base.io()

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "noise_level": self.noise_level,
                "critic_hidden": list(self.critic_hidden), "seed": self.seed}

    @property
    def device(self) -> torch.device:
        return self.base.device

    def to(self, device):
        self.base.to(device)
        self.critic.to(device)
        self._gen = torch.Generator(self.base.device).manual_seed(self.seed)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self.actor.eval()  # sampled and scored with the same (eval) forward
        return self

    def requires_grad_(self, requires_grad: bool = True):
        self.base.requires_grad_(requires_grad)  # the checkpoint's own trainable parts
        self.critic.requires_grad_(requires_grad)
        return self

    def reset(self, env_ids=None) -> None:
        return None  # per-env queues live in the chunk executor

    @torch.no_grad()
    def step(self, obs: Obs, state: Any = None, deterministic: bool = False) -> PolicyStep:
        batch = self.base.preprocess(obs)
        velocity, pooled = self.sde.prefix(batch)
        value = self.critic(pooled).squeeze(-1)
        n = int(pooled.shape[0])
        if deterministic:
            noise = torch.zeros((n, self.sde.chunk_size, self.sde.max_dim), device=self.device)
            out = self.sde.sample(batch, noise=noise, deterministic=True, velocity=velocity)
            log_prob = torch.zeros(n)
        else:
            out = self.sde.sample(batch, generator=self._gen, velocity=velocity)
            log_prob = out.log_prob
        return PolicyStep(self.base.postprocess(out.actions), log_prob=log_prob.float().cpu().numpy(),
                          value=value.float().cpu().numpy(),
                          extras={"flow_path": self.sde.pack(out.path).float().cpu().numpy()})

    def act(self, obs: Obs, deterministic: bool = True) -> np.ndarray:
        return self.step(obs, deterministic=deterministic).action

    @torch.no_grad()
    def value(self, obs: Obs) -> np.ndarray:
        return self.critic(self.sde.prefix(self.base.preprocess(obs))[1]).squeeze(-1).float().cpu().numpy()

    # -- PPO ---------------------------------------------------------------------------------
    def instruction_ids(self, texts: Sequence[str]) -> torch.Tensor:
        """Ids for instruction strings (a table kept here), so a rollout stores them as tensors."""
        for text in texts:
            if text not in self._texts:
                self._texts[text] = len(self._by_id)
                self._by_id.append(text)
        return torch.tensor([self._texts[t] for t in texts], dtype=torch.int64)

    def evaluate(self, obs: Mapping[str, Any], sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log-prob of the stored packed paths under the current weights, V(s), entropy) for
        a training minibatch (``obs``: tensors; ``instruction``: ids from :meth:`instruction_ids`)."""
        raw = {k: v for k, v in obs.items() if k != "instruction"}
        if "instruction" in obs:
            raw["instruction"] = [self._by_id[int(i)] for i in obs["instruction"].tolist()]
        batch = self.base.preprocess(raw)
        velocity, pooled = self.sde.prefix(batch)
        log_prob = self.sde.log_prob(batch, sample.to(self.device), velocity=velocity)
        value = self.critic(pooled.detach()).squeeze(-1)
        return log_prob, value, torch.full_like(value, self.sde.entropy())
