"""Behaviour cloning on demonstrations: the base policies of residual RL (``policies/bc.py``).

``embodied-train learner=bc train.dataset=<LeRobotDataset> train.offline_updates=N
train.total_steps=0`` fits the policy to the dataset's actions and evaluates it in the env
(``env=none``: on the dataset alone). One update:

1. a batch of ``batch_size`` demonstration windows: the observation at step ``t`` and the
   next ``chunk`` actions of the same episode (``extras["action_chunk"]``, with
   ``extras["chunk_mask"]`` False past the episode's end; the training loop draws them with
   :class:`embodied.replay.SequenceSampler`; ``chunk = 1`` uses plain transitions);
2. ``loss/bc`` = mean over the real steps of the squared error between the predicted and
   the demonstrated actions, both in standardised units (each action dimension scaled by
   the demonstrations' std, so a small gripper range weighs as much as a large arm range);
3. one AdamW step (weight decay ``weight_decay``), gradients clipped to ``max_grad_norm``;
   random-shift augmentation of pixels when ``shift_pad > 0``.

The state and action statistics come from the whole dataset before training
(:meth:`BC.prepare_offline`) and live in the policy, so whoever loads it normalises as
training did.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch

from embodied.checkpoint import optimizer_state
from embodied.contracts import Batch, Learner
from embodied.learners.nets import tree_map
from embodied.schema import num
from policies.bc import BCPolicy
from policies.encoders import RandomShift


@dataclass
class BCConfig:
    chunk: int = num(1, ge=1)
    """Actions predicted per observation (K); the chunk executor plays them open loop."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden sizes of the MLP head (LayerNorm + ReLU)."""
    lr: float = num(3e-4, gt=0)
    """AdamW learning rate."""
    weight_decay: float = num(1e-4, ge=0)
    """AdamW weight decay."""
    batch_size: int = num(256, ge=1)
    """Demonstration windows per update."""
    max_grad_norm: float = num(1.0, gt=0)
    """Global gradient norm clip."""
    feature_dim: int = num(50, ge=1)
    """Pixel features after the encoder's projection (pixel observations only)."""
    channels: int = num(32, ge=1)
    """Channels of each conv layer of the pixel encoder."""
    shift_pad: int = num(4, ge=0)
    """Random-shift augmentation padding of pixels during training (0: off)."""
    seed: int = 0
    """Seed of the initial weights."""
    device: str = "cpu"
    """Torch device of the network and of the update."""


class BC(Learner):
    name = "bc"

    def __init__(self, obs_space, action_space, cfg: BCConfig | None = None):
        import gymnasium as gym

        self.cfg = cfg = cfg or BCConfig()
        if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
            raise ValueError(f"learner=bc regresses continuous actions: it needs a flat Box action space, got "
                             f"{action_space}")
        spaces = obs_space.spaces
        cams = {c: tuple(s.shape) for c, s in spaces["pixels"].spaces.items()} if "pixels" in spaces else {}
        state_dim = int(spaces["state"].shape[0]) if "state" in spaces else 0
        self.device = torch.device(cfg.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.net = BCPolicy(int(action_space.shape[0]), state_dim, cams, cfg.hidden, cfg.chunk,
                                cfg.feature_dim, cfg.channels).to(self.device)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.shift = RandomShift(cfg.shift_pad)
        self.updates = 0
        self.fitted = False  # normalisation statistics from a dataset

    @property
    def rows_per_update(self) -> int:
        return self.cfg.batch_size

    @property
    def window(self) -> int | None:
        """Steps of each demonstration window the loop draws (None: plain transitions)."""
        return self.cfg.chunk if self.cfg.chunk > 1 else None

    def prepare_offline(self, replay) -> None:
        """Normalisation statistics of every stored demonstration step."""
        n = len(replay)
        state = replay.obs["state"][:n] if "state" in replay.obs else None
        self.net.set_normalization(state, replay.action[:n])
        self.fitted = True

    # ------------------------------------------------------------------ loss
    def _targets(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K, A) demonstrated actions and (B, K) mask of real steps."""
        ex = batch.extras or {}
        if self.cfg.chunk > 1:
            if "action_chunk" not in ex:
                raise ValueError(f"learner={self.name} with chunk={self.cfg.chunk} trains on windows: batch.extras lacks "
                                 "'action_chunk' (the training loop draws them with SequenceSampler)")
            chunk, mask = ex["action_chunk"], ex.get("chunk_mask")
            if chunk.shape[1] != self.cfg.chunk:
                raise ValueError(f"action_chunk holds {chunk.shape[1]} steps, learner.chunk={self.cfg.chunk}")
        else:
            chunk, mask = batch.action[:, None], None
        mask = torch.ones(chunk.shape[:2], dtype=torch.bool) if mask is None else mask.bool()
        return chunk.to(self.device).float(), mask.to(self.device)

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        obs = {k: tree_map(lambda x: x.to(self.device), v) for k, v in batch.obs.items() if k in ("state", "pixels")}
        if "pixels" in obs and self.net.training:
            obs["pixels"] = {c: self.shift(x) for c, x in obs["pixels"].items()}
        target, mask = self._targets(batch)
        error = (self.net.normalized_chunk(obs) - self.net.normalize_action(target)).pow(2).mean(-1)
        mask = mask.float()
        return {"loss/bc": (error * mask).sum() / mask.sum().clamp(min=1.0)}

    def loss_owners(self) -> dict[str, list]:
        return {"loss/bc": [self.net.encoder, self.net.head]}

    def update(self, batch: Batch) -> dict[str, float]:
        loss = self.losses(batch)["loss/bc"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.max_grad_norm)
        self.opt.step()
        self.updates += 1
        return {"loss/bc": float(loss.detach()), "grad_norm": float(grad_norm)}

    # ------------------------------------------------------------------ export / checkpoint
    def policy(self) -> BCPolicy:
        return self.net

    def state_dict(self) -> dict[str, Any]:
        return {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.cfg).items()},
                "net": self.net.state_dict(), "opt": self.opt.state_dict(), "updates": self.updates,
                "fitted": self.fitted}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(optimizer_state(state["opt"]))
        self.updates = int(state["updates"])
        self.fitted = bool(state.get("fitted", True))
