"""Behaviour cloning of the native VLA (``policies/vla/native.py``) on demonstrations.

``embodied-train env=lang_reach learner=vla train.dataset=<LeRobotDataset>
train.offline_updates=N train.total_steps=0`` fits the VLA to the dataset's actions as
tokens and evaluates it in the env. One update:

1. a batch of ``batch_size`` demonstration windows: images, state and instruction at step
   ``t`` and the next ``chunk`` actions of the same episode (``chunk = 1``: transitions);
2. ``loss/bc`` = cross-entropy of each action dimension's token (the nearest of ``bins``
   centres after mapping the demonstrations' 1st..99th percentile range onto [-1, 1]),
   averaged over dimensions and the real steps of each window;
3. one AdamW step, gradients clipped to ``max_grad_norm``; random-shift augmentation of
   the images when ``shift_pad > 0``.

The state statistics, the action range and every instruction are read from the whole
dataset before training (:meth:`VLABC.prepare_offline`): an instruction the encoder does not
accept is a one-line error then, before any update. The value head is not trained here;
``+experiment=ppo_vla policy=<this run>`` (PPO) warms it up before the policy moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from embodied.contracts import Batch
from embodied.learners.bc import BC
from embodied.learners.nets import tree_map
from embodied.schema import num
from policies.encoders import RandomShift
from policies.vla.native import NativeVLA


@dataclass
class VLAConfig:
    bins: int = num(256, ge=2)
    """Tokens per action dimension: N bins are N centres, linspace(-1, 1, N)."""
    chunk: int = num(1, ge=1)
    """Actions predicted per observation (K); the chunk executor plays them open loop. PPO fine-tuning needs 1."""
    text: Literal["minilm", "learned"] = "minilm"
    """Instruction encoder: a frozen all-MiniLM-L6-v2 (cached per instruction) or learned hashed word embeddings."""
    text_path: str | None = None
    """Another transformers sentence-encoder folder instead of the packaged MiniLM."""
    max_tokens: int | None = num(None, ge=1)
    """Longest instruction accepted (null: the encoder's own limit, 256 for MiniLM; 32 words for learned)."""
    text_dim: int = num(64, ge=1)
    """Width of the learned word embeddings (text=learned)."""
    feature_dim: int = num(128, ge=1)
    """Width of the projected image and instruction features."""
    channels: int = num(32, ge=1)
    """Channels of each conv layer."""
    pool: Literal["spatial_softmax", "flatten"] = "spatial_softmax"
    """How the last conv map becomes features: each channel's expected (x, y) (spatial soft-argmax), or flattened."""
    hidden: tuple[int, ...] = (256, 256)
    """Trunk MLP sizes (LayerNorm + ReLU)."""
    value_hidden: tuple[int, ...] = (256, 256)
    """Value-head MLP sizes (on detached trunk features; trained by PPO, not here)."""
    temperature: float = num(1.0, gt=0)
    """Sampling temperature the saved policy acts with (and PPO scores with)."""
    token_sigma: float = num(0.0, ge=0)
    """Target of the token loss: 0 the nearest token (OpenVLA's cross-entropy); > 0 a Gaussian of this many
    bin widths around the demonstrated value, so neighbouring tokens share the credit."""
    action_quantiles: tuple[float, float] | None = (0.01, 0.99)
    """Percentiles of the demonstrated actions mapped onto the token range (null: the contract's [-1, 1])."""
    lr: float = num(3e-4, gt=0)
    """AdamW learning rate."""
    weight_decay: float = num(1e-4, ge=0)
    """AdamW weight decay."""
    batch_size: int = num(64, ge=1)
    """Demonstration windows per update."""
    max_grad_norm: float = num(1.0, gt=0)
    """Global gradient norm clip."""
    shift_pad: int = num(0, ge=0)
    """Random-shift augmentation padding of the images (0: off, the default). Measured on lang_reach
    (1,791 demo frames, 21 bins): without it the clone leaves the "always full speed" plateau after
    about 1,250 updates (sign agreement 0.55 -> 0.82); with a 4-pixel shift it was still there at 1,750."""
    seed: int = 0
    """Seed of the initial weights."""
    device: str = "cpu"
    """Torch device of the network and of the update."""


class VLABC(BC):
    """BC's update, windows and checkpoint; the network, its normalisation and the token loss differ."""

    name = "vla"

    def __init__(self, obs_space, action_space, cfg: VLAConfig | None = None):
        import gymnasium as gym

        self.cfg = cfg = cfg or VLAConfig()
        if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
            raise ValueError(f"learner=vla tokenises continuous actions: it needs a flat Box action space, got "
                             f"{action_space}")
        spaces = obs_space.spaces
        if "pixels" not in spaces or "instruction" not in spaces:
            raise ValueError("learner=vla reads camera images and the instruction: set env.pixels=true and "
                             "learner.inputs=[pixels, state, instruction] (or [pixels, instruction])")
        cams = {c: tuple(s.shape) for c, s in spaces["pixels"].spaces.items()}
        state_dim = int(spaces["state"].shape[0]) if "state" in spaces else 0
        self.device = torch.device(cfg.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.net = NativeVLA(int(action_space.shape[0]), state_dim, cams, cfg.bins, cfg.chunk, cfg.text,
                                 cfg.text_path, cfg.max_tokens, cfg.text_dim, feature_dim=cfg.feature_dim,
                                 channels=cfg.channels, hidden=cfg.hidden, value_hidden=cfg.value_hidden,
                                 temperature=cfg.temperature, pool=cfg.pool).to(self.device)
        trained = [p for n, p in self.net.named_parameters() if not n.startswith("critic.")]
        self.opt = torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.shift = RandomShift(cfg.shift_pad)
        self.updates = 0
        self.fitted = False

    def prepare_offline(self, replay) -> None:
        """Normalisation from every demonstration step; every instruction checked against the encoder."""
        n = len(replay)
        state = replay.obs["state"][:n] if "state" in replay.obs else None
        self.net.set_normalization(state, replay.action[:n], self.cfg.action_quantiles)
        self.fitted = True
        vocab = getattr(replay, "vocab", None)
        if vocab:
            self.net.check_instructions([str(t) for t in vocab])

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        obs = {k: tree_map(lambda x: x.to(self.device), v) for k, v in batch.obs.items() if k in ("state", "pixels")}
        if "instruction" not in batch.obs:
            raise ValueError("learner=vla trains on instructions: the batch has no obs['instruction'] "
                             "(the dataset needs a task per episode)")
        obs["instruction"] = list(batch.obs["instruction"])
        if self.net.training and self.cfg.shift_pad:
            obs["pixels"] = {c: self.shift(x) for c, x in obs["pixels"].items()}
        target, mask = self._targets(batch)
        return {"loss/bc": self.net.bc_loss(obs, target, mask, self.cfg.token_sigma)}

    def loss_owners(self) -> dict[str, list]:
        return {"loss/bc": [self.net.encoder, self.net.actor]}
