"""A LeRobot policy (ACT, Diffusion Policy, and the flow VLAs SmolVLA and pi0) as an
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
policies (SmolVLA, pi0) take ``noise=`` (SmolVLA by name, pi0 through the keywords its
``predict_action_chunk`` passes on to ``sample_actions``) and get zeros when
``deterministic`` (a seeded draw otherwise). The weights are frozen; :meth:`state_dict` is
the LeRobot model's own. RL fine-tuning of the flow VLAs samples through
:class:`policies.vla.flow_sde.FlowSDE` on :meth:`preprocess`'s batch and maps the chunk back
with :meth:`postprocess`.

Refused in one line, before any env step: a ``config.json`` whose ``type`` this LeRobot
does not know; a folder without ``model.safetensors`` (pi0's loader would go on with random
weights); a SmolVLA whose VLM (``vlm_model_name``: config + processor, read even when its
weights are not) cannot be read here; a camera the policy reads that the observation lacks
(``policies.base.check_base`` says the same from the env's spaces).

LeRobot 0.6.1 asks for transformers < 5.6. On later versions two calls its flow VLAs make
changed meaning, and :func:`lerobot_compat` (run on load) restores them where, and only
where, the installed version needs it: SmolVLA crops its prefix cache with a positive
length (keep the first n tokens), which ``DynamicCache.crop`` now refuses; pi0's Gemma
passes ``cache_position`` / ``past_key_values`` to ``create_causal_mask``, which now takes
``cache`` (pi0 hands it a ready 4-d mask, returned as is). Pinning transformers < 5.6 makes
both no-ops.
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
            from lerobot.policies.factory import get_policy_class
        except ImportError as err:  # pragma: no cover - lerobot is a dependency
            raise ImportError(f"loading a LeRobot policy needs lerobot: {err}") from None
        from embodied.datasets.keys import DatasetKeys

        self.source, self.device = str(source), torch.device(device)
        self.keys = DatasetKeys.from_config(dataset_keys)
        _check_type(self.source, PreTrainedConfig)
        try:
            cfg = PreTrainedConfig.from_pretrained(self.source)
        except Exception as err:  # a hub id offline, a folder without config.json
            raise ValueError(f"base_policy={source}: cannot read a LeRobot policy config there "
                             f"({_one_line(err)})") from None
        cfg.device = str(self.device)
        if int(getattr(cfg, "n_obs_steps", 1) or 1) > 1:
            raise ValueError(f"base_policy={source}: a {cfg.type} policy with n_obs_steps={cfg.n_obs_steps} needs an "
                             "observation history per env, which this adapter does not keep yet; train it with "
                             "n_obs_steps=1")
        self.config = cfg
        lerobot_compat()
        self.model = _build(get_policy_class(cfg.type), self.source, cfg)
        # what the policy's own recipe trains (SmolVLA / pi0 freeze their vision tower, SmolVLA
        # its VLM too: freeze_vision_encoder, train_expert_only); requires_grad_(True) restores it
        self._trainable = {name: p.requires_grad for name, p in self.model.named_parameters()}
        self.model.to(self.device).eval().requires_grad_(False)
        self._processors()
        self.chunk_size = int(getattr(cfg, "chunk_size", None) or getattr(cfg, "n_action_steps", 1))
        self.n_action_steps = int(getattr(cfg, "n_action_steps", None) or self.chunk_size)
        self._takes_noise = _takes_noise(self.model)
        self._gen = torch.Generator(self.device).manual_seed(seed)
        feats = cfg.input_features  # the model's constructor has added any empty cameras it pads with
        self._state_key = next((k for k, f in feats.items() if _ftype(f) == "STATE"), None)
        self._images = [k for k, f in feats.items() if _ftype(f) == "VISUAL" and not _padding_camera(k)]
        self._shapes = {k: tuple(f.shape) for k, f in feats.items()}
        self._action_dim = int(cfg.output_features["action"].shape[0])

    def _processors(self) -> None:
        from lerobot.policies.factory import make_pre_post_processors

        self.pre, self.post = make_pre_post_processors(
            self.config, pretrained_path=self.source,
            preprocessor_overrides={"device_processor": {"device": str(self.device)}})

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
            batch[self._state_key] = _tensor(obs["state"], self.device).float()
        pixels = obs.get("pixels", {})
        for key in self._images:
            cam = self.keys.env_camera(key)
            if cam not in pixels:
                raise ValueError(f"the LeRobot policy reads {key} (env camera {cam!r}); the observation has "
                                 f"cameras {sorted(pixels)}")
            frames = _tensor(pixels[cam], self.device)
            batch[key] = frames.permute(0, 3, 1, 2).float() / 255.0
        n = next(iter(batch.values())).shape[0]
        instruction = obs.get("instruction")
        batch["task"] = list(instruction) if instruction is not None else [""] * n
        return batch

    def preprocess(self, obs: Obs) -> dict[str, Any]:
        """The env's observation batch -> the model's input batch (the checkpoint's own
        pre-processor: normalised state, tokenised instruction), on the policy's device."""
        return self.pre(self._batch(obs))

    def postprocess(self, chunk: torch.Tensor) -> np.ndarray:
        """The model's normalised actions ``(B, [chunk,] >= A)`` -> the contract's: the
        checkpoint's post-processor (un-normalisation), then a clip to [-1, 1]."""
        action = self.post(chunk[..., : self._action_dim])
        return torch.as_tensor(action).clamp(-1.0, 1.0).float().cpu().numpy()

    @torch.no_grad()
    def step(self, obs: Obs, state: Any = None, deterministic: bool = True) -> PolicyStep:
        raw = self._batch(obs)
        batch = self.pre(raw)
        kw = {}
        if self._takes_noise:
            shape = (len(raw["task"]), self.chunk_size, int(getattr(self.config, "max_action_dim", self._action_dim)))
            kw["noise"] = (torch.zeros(shape, device=self.device) if deterministic
                           else torch.randn(shape, generator=self._gen, device=self.device))
        action = self.postprocess(self.model.predict_action_chunk(batch, **kw))
        if action.ndim == 2:  # a policy that predicts one action
            action = action[:, None]
        return PolicyStep(action if self.chunk_size > 1 else action[:, 0])

    def act(self, obs: Obs, deterministic: bool = True) -> np.ndarray:
        return self.step(obs, deterministic=deterministic).action

    def reset(self, env_ids=None) -> None:
        return None  # per-env queues live in the chunk executor; LeRobot's own queue is never used

    # -- frozen module plumbing ------------------------------------------------------------
    def requires_grad_(self, flag: bool = False):
        """False freezes every weight; True makes trainable what the checkpoint's own recipe
        trains (its ``freeze_vision_encoder`` / ``train_expert_only`` hold)."""
        for name, p in self.model.named_parameters():
            p.requires_grad_(bool(flag) and self._trainable.get(name, True))
        return self

    def eval(self):
        self.model.eval()
        return self

    def to(self, device):
        """Move the model and rebuild the processors for ``device`` (their device step moves the batch)."""
        device = torch.device(device)
        if device != self.device:
            self.device = device
            self.config.device = str(device)
            self.model.to(device)
            self._processors()
            self._gen = torch.Generator(device).manual_seed(int(self._gen.initial_seed()))
        return self

    def state_dict(self) -> dict[str, Any]:
        return self.model.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> Any:
        return self.model.load_state_dict(state)


def _tensor(x, device: torch.device) -> torch.Tensor:
    """A numpy array or a tensor (a training batch's, on any device) on ``device``."""
    return x.to(device) if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), device=device)


def _ftype(feature) -> str:
    kind = getattr(feature, "type", None)
    return str(getattr(kind, "value", kind))


def _padding_camera(key: str) -> bool:
    """SmolVLA's and pi0's ``empty_cameras``: blank frames the model adds itself."""
    return key.rsplit(".", 1)[-1].startswith("empty_camera_")


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200] if text else ''}"


def _check_type(source: str, config_class) -> None:
    """A local ``config.json`` whose ``type`` this LeRobot does not know -> one line naming it."""
    import json
    from pathlib import Path

    path = Path(source).expanduser() / "config.json"
    if not path.is_file():
        return
    try:
        kind = json.loads(path.read_text()).get("type")
    except (OSError, ValueError, AttributeError):
        return
    known = sorted(config_class.get_known_choices())
    if kind not in known:
        import lerobot

        raise ValueError(f"base_policy={source}: config.json has type={kind!r}, which lerobot {lerobot.__version__} "
                         f"does not know (known: {', '.join(known)}); fix the type or install the lerobot that "
                         "wrote the checkpoint")


_EXTRAS = {"pi0": "pi", "pi05": "pi", "pi0_fast": "pi"}  # lerobot's extra per policy type, where not the type


def _build(policy_class, source: str, cfg):
    """``from_pretrained``, with the failures a flow VLA's constructor hits as one line (and
    a local folder without weights refused: pi0's loader would go on with random ones)."""
    from pathlib import Path

    folder = Path(source).expanduser()
    if folder.is_dir() and not (folder / "model.safetensors").is_file():
        raise ValueError(f"base_policy={source}: no model.safetensors there; pass the folder save_pretrained wrote "
                         "(e.g. checkpoints/last/pretrained_model)")
    try:
        return policy_class.from_pretrained(source, config=cfg)
    except ImportError as err:
        raise ImportError(f"base_policy={source}: the {cfg.type} policy needs a package that is not installed "
                          f"({_one_line(err)}); install lerobot[{_EXTRAS.get(cfg.type, cfg.type)}]") from None
    except (OSError, ValueError) as err:
        vlm = getattr(cfg, "vlm_model_name", None)
        if vlm is None:
            raise
        raise ValueError(f"base_policy={source}: the {cfg.type} policy builds its VLM from vlm_model_name={vlm!r}, "
                         f"which cannot be read here ({_one_line(err)}); point vlm_model_name in config.json at a "
                         "local folder with the VLM's config and processor, or fetch it into the hub cache") from None


def _takes_noise(model) -> bool:
    """Whether ``predict_action_chunk`` accepts ``noise=``: by name (SmolVLA), or through
    ``**kwargs`` that reach a ``sample_actions(noise=...)`` (pi0)."""
    params = inspect.signature(model.predict_action_chunk).parameters
    if "noise" in params:
        return True
    passes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    sample = getattr(getattr(model, "model", None), "sample_actions", None)
    return passes_kwargs and sample is not None and "noise" in inspect.signature(sample).parameters


_COMPAT_DONE = False


def lerobot_compat() -> None:
    """Make LeRobot 0.6.1's SmolVLA and pi0 run on transformers >= 5.6 (see the module
    docstring); each fix is installed only where the installed transformers needs it."""
    global _COMPAT_DONE
    if _COMPAT_DONE:
        return
    _COMPAT_DONE = True
    try:
        from transformers import DynamicCache
        from transformers import masking_utils
    except ImportError:  # pragma: no cover - transformers comes with lerobot's VLA extras
        return
    probe = DynamicCache()
    probe.update(torch.zeros(1, 1, 2, 1), torch.zeros(1, 1, 2, 1), 0)
    try:
        probe.crop(1)
    except ValueError:
        from lerobot.policies.smolvla import smolvlm_with_expert

        smolvlm_with_expert.DynamicCache = _prefix_cache(DynamicCache)
    if "cache_position" not in inspect.signature(masking_utils.create_causal_mask).parameters:
        from lerobot.policies import pi_gemma

        pi_gemma.create_causal_mask = _causal_mask_with_cache(masking_utils.create_causal_mask)


def _prefix_cache(cache_class):
    class PrefixCache(cache_class):
        """``crop(n)`` with n > 0 keeps each layer's first n tokens, as SmolVLA asks (its
        self-attention layers hold prefix + suffix after a step, its cross-attention layers
        the prefix alone)."""

        def crop(self, max_length: int) -> None:
            if max_length <= 0:
                return super().crop(max_length)
            for layer in self.layers:
                extra = layer.get_seq_length() - max_length
                if extra > 0:
                    layer.crop(-extra)

    return PrefixCache


def _causal_mask_with_cache(create_causal_mask):
    def causal_mask(config, inputs_embeds, attention_mask, cache_position=None, past_key_values=None, **kw):
        return create_causal_mask(config=config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  cache=past_key_values, **kw)

    return causal_mask
