"""A LeRobot policy (ACT first; Diffusion Policy and SmolVLA through the same path) as an
embodied :class:`~embodied.contracts.Policy`: evaluated, or frozen as a residual's base.

    policy = LeRobotPolicy("outputs/train/act/checkpoints/last/pretrained_model")  # or a hub id
    chunks = policy.act(obs_batch)            # (B, chunk_size, A) in [-1, 1]

What it does per call, for a batch of envs:

1. the env's observation -> LeRobot's batch: ``state`` -> the policy's STATE feature
   (``observation.state``), each camera ``(B, H, W, 3) uint8`` -> its VISUAL feature
   ``(B, 3, H, W)`` float in [0, 1] (``observation.images.<camera>``, or the column a
   :class:`~embodied.datasets.keys.DatasetKeys` names), the instruction -> ``task``;
2. the checkpoint's own pre-processor (normalisation, tokenisation), saved beside it;
3. ``predict_action_chunk`` (never ``select_action``: LeRobot's ``select_action`` keeps ONE
   queue for the whole batch and its ``reset()`` clears every env; the project's chunk
   executor keeps a queue per env and resets only the env whose episode ended);
4. the checkpoint's post-processor (un-normalisation) and a clip to the contract's [-1, 1]
   (so the checkpoint must have been trained on actions in [-1, 1], as the project's demos are).

Policies that read an observation history (``n_obs_steps > 1``, Diffusion Policy's default)
are refused for now: the adapter keeps no per-env history.

The executor plays the first ``n_action_steps`` actions of each chunk (the checkpoint's own
setting). Deterministic where the policy allows: ACT at inference has no sampling; flow
policies (SmolVLA, pi0) take ``noise=`` and get zeros when ``deterministic`` (a seeded
draw otherwise). The weights are frozen; :meth:`state_dict` is the LeRobot model's own.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import numpy as np
import torch

from embodied.contracts import Obs, PolicyStep


class LeRobotPolicy:
    kind = "lerobot"

    def __init__(self, source: str, device: str = "cpu", dataset_keys: Mapping[str, Any] | None = None,
                 seed: int = 0):
        try:
            from lerobot.configs.policies import PreTrainedConfig
            from lerobot.policies.factory import get_policy_class, make_pre_post_processors
        except ImportError as err:  # pragma: no cover - lerobot is a dependency
            raise ImportError(f"loading a LeRobot policy needs lerobot: {err}") from None
        from embodied.datasets.keys import DatasetKeys

        self.source, self.device = str(source), torch.device(device)
        self.keys = DatasetKeys.from_config(dataset_keys)
        try:
            cfg = PreTrainedConfig.from_pretrained(self.source)
        except Exception as err:  # a hub id offline, a folder without config.json
            raise ValueError(f"base_policy={source}: cannot read a LeRobot policy config there "
                             f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
        cfg.device = str(self.device)
        if int(getattr(cfg, "n_obs_steps", 1) or 1) > 1:
            raise ValueError(f"base_policy={source}: a {cfg.type} policy with n_obs_steps={cfg.n_obs_steps} needs an "
                             "observation history per env, which this adapter does not keep yet; train it with "
                             "n_obs_steps=1")
        self.config = cfg
        self.model = get_policy_class(cfg.type).from_pretrained(self.source, config=cfg)
        self.model.to(self.device).eval().requires_grad_(False)
        self.pre, self.post = make_pre_post_processors(
            cfg, pretrained_path=self.source,
            preprocessor_overrides={"device_processor": {"device": str(self.device)}})
        self.chunk_size = int(getattr(cfg, "chunk_size", None) or getattr(cfg, "n_action_steps", 1))
        self.n_action_steps = int(getattr(cfg, "n_action_steps", None) or self.chunk_size)
        self._takes_noise = "noise" in inspect.signature(self.model.predict_action_chunk).parameters
        self._gen = torch.Generator(self.device).manual_seed(seed)
        feats = cfg.input_features
        self._state_key = next((k for k, f in feats.items() if _ftype(f) == "STATE"), None)
        self._images = [k for k, f in feats.items() if _ftype(f) == "VISUAL"]
        self._shapes = {k: tuple(f.shape) for k, f in feats.items()}
        self._action_dim = int(cfg.output_features["action"].shape[0])

    # -- what it reads and emits (policies.base.check_base) ------------------------------
    def io(self) -> dict[str, Any]:
        cams = {}
        for key in self._images:
            c, h, w = self._shapes[key]
            cams[self.keys.env_camera(key)] = (h, w, c)
        state = self._shapes[self._state_key][0] if self._state_key else 0
        return {"action_dim": self._action_dim, "state_dim": state, "cameras": cams}

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "type": self.config.type, **self.io()}

    # -- acting ---------------------------------------------------------------------------
    def _batch(self, obs: Obs) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        if self._state_key:
            if "state" not in obs:
                raise ValueError(f"the LeRobot policy reads {self._state_key}: the observation has no 'state'")
            batch[self._state_key] = torch.as_tensor(np.asarray(obs["state"], np.float32), device=self.device)
        pixels = obs.get("pixels", {})
        for key in self._images:
            cam = self.keys.env_camera(key)
            if cam not in pixels:
                raise ValueError(f"the LeRobot policy reads {key} (env camera {cam!r}); the observation has "
                                 f"cameras {sorted(pixels)}")
            frames = torch.as_tensor(np.asarray(pixels[cam]), device=self.device)
            batch[key] = frames.permute(0, 3, 1, 2).float() / 255.0
        n = next(iter(batch.values())).shape[0]
        instruction = obs.get("instruction")
        batch["task"] = list(instruction) if instruction is not None else [""] * n
        return batch

    @torch.no_grad()
    def step(self, obs: Obs, state: Any = None, deterministic: bool = True) -> PolicyStep:
        raw = self._batch(obs)
        batch = self.pre(raw)
        kw = {}
        if self._takes_noise:
            shape = (len(raw["task"]), self.chunk_size, int(getattr(self.config, "max_action_dim", self._action_dim)))
            kw["noise"] = (torch.zeros(shape, device=self.device) if deterministic
                           else torch.randn(shape, generator=self._gen, device=self.device))
        chunk = self.model.predict_action_chunk(batch, **kw)[..., : self._action_dim]
        action = self.post(chunk)
        action = torch.as_tensor(action).clamp(-1.0, 1.0).float().cpu().numpy()
        if action.ndim == 2:  # a policy that predicts one action
            action = action[:, None]
        return PolicyStep(action if self.chunk_size > 1 else action[:, 0])

    def act(self, obs: Obs, deterministic: bool = True) -> np.ndarray:
        return self.step(obs, deterministic=deterministic).action

    def reset(self, env_ids=None) -> None:
        return None  # per-env queues live in the chunk executor; LeRobot's own queue is never used

    # -- frozen module plumbing ------------------------------------------------------------
    def requires_grad_(self, flag: bool = False):
        self.model.requires_grad_(flag)
        return self

    def eval(self):
        self.model.eval()
        return self

    def to(self, device):
        return self

    def state_dict(self) -> dict[str, Any]:
        return self.model.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> Any:
        return self.model.load_state_dict(state)


def _ftype(feature) -> str:
    kind = getattr(feature, "type", None)
    return str(getattr(kind, "value", kind))
