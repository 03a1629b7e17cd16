"""OpenVLA-style autoregressive VLAs: a transformers (vision-)language model writes one
action token per action dimension, reading the prompt

    "In: What action should the robot take to {instruction}?\\nOut:"   (+ the camera frame)

(the instruction lower-cased, a final "?" or "." dropped, as OpenVLA's training prompts).

**Loading.** ``model`` is a local folder or a hub id. A config with a ``vision_config``
loads through ``AutoModelForImageTextToText`` + ``AutoProcessor`` (LLaVA, Idefics3 /
SmolVLM, ...): the frame of ``camera`` goes through the model's own processor, and the
prompt starts with the processor's image token. Any other config loads through
``AutoModelForCausalLM`` + ``AutoTokenizer``: a text-only LM reads the instruction only,
and asking it to read a camera is a one-line error (it has no way to see pixels; no
projection is bolted on).

**Action tokens.** ``bins`` N gives N bins with N centres ``linspace(-1, 1, N)``
(:class:`~policies.vla.tokenizer.ActionTokenizer`; OpenVLA's "256 bins" are 256 edges and
255 centres). Bin ``k`` is vocabulary id ``vocab_end - 1 - k``: the LAST N ids of the
vocabulary, in OpenVLA's direction (its last id is the lowest value); ``vocab_end``
defaults to the tokenizer's base vocabulary size (``tokenizer.vocab_size``, added tokens
such as ``<image>`` excluded, as OpenVLA). At each of the ``action_dim`` decoding steps
the logits are restricted to those N ids (every other id is -inf) and divided by the
temperature, so a token outside the action vocabulary cannot be drawn.

**Log-probabilities.** ``log_prob(params, tokens)`` is ONE teacher-forced forward over
prompt + action tokens: per step ``log_softmax(logits / temperature)`` over the action ids
at the response positions, summed over the action tokens. Sampling uses the same
function step by step (with the KV cache), so the log-probability reported at rollout time
is the one PPO recomputes (float32: to ~1e-6; in low precision set ``rescore=True`` to
report the teacher-forced value itself). Prompts are left-padded with explicit position
ids, so a row scores the same whatever batch it is in. Dropout stays off even in
``train()`` mode: PPO's ratio must compare the same function before and after sampling.

**Entropy** is the sum over the action steps of the entropy of each step's distribution,
conditioned on the tokens last scored or sampled (the chain rule: its expectation is the
joint entropy).

**Value head** (``value_head=True``): LayerNorm + MLP on the last hidden state at the
prompt's final position (the position that predicts the first action token), read
DETACHED: the value loss and a critic warm-up move the head only, never the pretrained
model that is the policy (as the native VLA).

**Normalisation.** Actions in the contract's [-1, 1] map onto the bins through the stored
range ``[action_low, action_high]`` (buffers, saved with the weights): the
demonstrations' q01 / q99 after :meth:`AutoregressiveVLA.set_normalization`, else
[-1, 1]. Decoded actions are clipped to [-1, 1].

``spec()`` holds the model source (an absolute path for a folder) and the policy's
settings; ``state_dict()`` holds ALL weights (the model's, the value head's) and the
normalisation, so :func:`policies.save_policy` / :func:`policies.load_policy` round-trip a
fine-tuned policy (loading reads the architecture from the source, then the saved weights).

The token-policy surface of :class:`policies.vla.native.NativeVLA` (``features``,
``dist_params``, ``log_prob``, ``entropy``, ``sample``, ``value_of``, ``to_action``,
``tokens_of``, ``instruction_ids``): ``features`` prepares the prompt (no forward),
``dist_params`` wraps it, the forward runs in ``log_prob`` / ``sample`` and ``value_of``
reuses its hidden state, so one PPO minibatch costs one forward. Tokens are bin indices
``0 .. N-1`` (``extras["tokens"]``), as the native VLA's.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from embodied.contracts import Obs, PolicyStep
from policies.vla.tokenizer import ActionTokenizer

PROMPT = "In: What action should the robot take to {instruction}?\nOut:"


@dataclass
class Prompt:
    """What :meth:`AutoregressiveVLA.features` returns: model inputs of a left-padded batch."""

    inputs: dict[str, torch.Tensor]  # input_ids, attention_mask, position_ids (+ pixel_values, ...)
    hidden: torch.Tensor | None = None  # (B, H) last hidden state at the prompt's end, once a forward ran


@dataclass
class TokenDist:
    """What :meth:`AutoregressiveVLA.dist_params` returns: the action-token distribution given a prompt."""

    prompt: Prompt
    step_log_probs: torch.Tensor | None = None  # (B, A, N) of the tokens last scored or sampled
    sampled_log_prob: torch.Tensor | None = None  # (B,) log-probability of the last sample


def load_model(source: str, dtype: str = "float32", trust_remote_code: bool = False):
    """``(model, processor_or_tokenizer, has_vision)`` from a folder or hub id, one-line errors."""
    from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor,
                              AutoTokenizer)

    path = Path(source).expanduser()
    if (path.exists() or str(source).startswith((".", "/", "~"))) and not path.is_dir():
        raise FileNotFoundError(f"model={source} is not a model folder (config.json + weights) nor a hub id")
    if not hasattr(torch, dtype) or not isinstance(getattr(torch, dtype), torch.dtype):
        raise ValueError(f"dtype must name a torch dtype such as float32 or bfloat16, got {dtype!r}")
    kw = {"trust_remote_code": bool(trust_remote_code)}
    try:
        config = AutoConfig.from_pretrained(source, **kw)
        vision = getattr(config, "vision_config", None) is not None
        cls = AutoModelForImageTextToText if vision else AutoModelForCausalLM
        model = cls.from_pretrained(source, dtype=getattr(torch, dtype), **kw)
        processor = (AutoProcessor if vision else AutoTokenizer).from_pretrained(source, **kw)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load model={source}: {str(err).strip().splitlines()[0]}") from None
    return model, processor, vision


class AutoregressiveVLA(nn.Module):
    """Implements :class:`embodied.Policy`; see the module docstring."""

    kind = "autoregressive_vla"
    head = "categorical"
    discrete = False
    log_std = None
    chunk_size = 1
    n_action_steps = 1
    value_reads_detached = True  # PPO: the value loss moves the value head only

    def __init__(self, model: str, action_dim: int, camera: str | None = None, bins: int = 256,
                 vocab_end: int | None = None, prompt: str = PROMPT, temperature: float = 1.0,
                 value_head: bool = True, value_hidden: int = 256, dtype: str = "float32",
                 trust_remote_code: bool = False, rescore: bool = False):
        super().__init__()
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if "{instruction}" not in prompt:
            raise ValueError(f"prompt must contain '{{instruction}}', got {prompt!r}")
        local = Path(model).expanduser()
        source = str(local.resolve()) if local.is_dir() else str(model)  # a saved policy loads from any folder
        self.actor, self.processor, self.vision = load_model(source, dtype, trust_remote_code)
        self.actor.eval()
        # the KV cache's keyword: `cache` in recent transformers, `past_key_values` before
        self._cache_kw = "cache" if "cache" in inspect.signature(self.actor.forward).parameters else "past_key_values"
        if camera is None and self.vision:
            raise ValueError(f"model={model} is a vision-language model: name the camera it reads (camera=<name>)")
        if camera is not None and not self.vision:
            raise ValueError(f"model={model} is a text-only language model and cannot read camera {camera!r}: "
                             "use a vision-language model folder, or camera=null")
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.tokenizer.padding_side = "left"  # every prompt ends at the same position
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.image_token = getattr(self.processor, "image_token", None) if self.vision else None
        self.action_dim, self.camera, self.prompt = int(action_dim), camera, prompt
        self.action_tokenizer = ActionTokenizer(bins)
        self.bins = self.action_tokenizer.bins
        self.vocab_end = int(vocab_end if vocab_end is not None else self.tokenizer.vocab_size)
        text_config = self.actor.config.get_text_config()
        if "mrope" in str(getattr(text_config, "rope_parameters", None) or getattr(text_config, "rope_scaling", None)):
            raise ValueError(f"model={model} uses 3-D (mrope) positions, which this wrapper does not build: use a "
                             "model with 1-D positions (Llama-style LMs, LLaVA, Idefics3 / SmolVLM)")
        self._check_vocab(int(getattr(text_config, "vocab_size", self.vocab_end)))
        self.max_positions = getattr(text_config, "max_position_embeddings", None)
        self.temperature, self.rescore = float(temperature), bool(rescore)
        self.config = {"model": source, "action_dim": self.action_dim, "camera": camera, "bins": self.bins,
                       "vocab_end": self.vocab_end, "prompt": prompt, "value_head": bool(value_head),
                       "value_hidden": int(value_hidden), "dtype": dtype,
                       "trust_remote_code": bool(trust_remote_code), "rescore": self.rescore}
        width = int(text_config.hidden_size)
        self.critic = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, int(value_hidden)), nn.ReLU(),
                                    nn.Linear(int(value_hidden), 1)) if value_head else None
        self.register_buffer("action_ids", self.vocab_end - 1 - torch.arange(self.bins))  # bin k -> vocabulary id
        self.register_buffer("action_low", -torch.ones(self.action_dim))
        self.register_buffer("action_high", torch.ones(self.action_dim))
        self._vocab: list[str] = []  # instruction strings seen, for id tensors in rollouts
        self._vocab_ids: dict[str, int] = {}

    def _check_vocab(self, model_vocab: int) -> None:
        first = self.vocab_end - self.bins
        if first < 0 or self.vocab_end > model_vocab:
            raise ValueError(f"{self.bins} action ids ending at vocab_end={self.vocab_end} do not fit the model's "
                             f"vocabulary of {model_vocab}")
        special = set(self.tokenizer.all_special_ids)
        image_id = self.tokenizer.convert_tokens_to_ids(self.image_token) if self.image_token else None
        clash = sorted(i for i in special | {image_id} if i is not None and first <= i < self.vocab_end)
        if clash:
            raise ValueError(f"the action ids {first}..{self.vocab_end - 1} include special token id {clash[0]} "
                             f"({self.tokenizer.convert_ids_to_tokens(clash[0])!r}): set vocab_end or fewer bins")

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, **copy.deepcopy({**self.config, "temperature": self.temperature})}

    def io(self) -> dict[str, Any]:
        """What it reads and emits (:func:`policies.base.check_base`): any frame size, the processor resizes."""
        return {"action_dim": self.action_dim, "state_dim": 0, "cameras": {self.camera: None} if self.camera else {}}

    @property
    def device(self) -> torch.device:
        return self.action_low.device

    def train(self, mode: bool = True) -> "AutoregressiveVLA":
        super().train(mode)
        self.actor.eval()  # dropout off while training too: the PPO ratio compares one function
        return self

    # -- normalisation ----------------------------------------------------------------------
    @torch.no_grad()
    def set_normalization(self, action: np.ndarray, quantiles: tuple[float, float] = (0.01, 0.99)) -> None:
        """The action range the bins span: per-dimension ``quantiles`` of demonstrated actions
        (OpenVLA's q01 / q99), within [-1, 1]; a dimension narrower than 1e-3 is widened to it."""
        a = np.asarray(action, np.float64).reshape(len(action), -1)
        lo, hi = np.quantile(a, quantiles[0], 0), np.quantile(a, quantiles[1], 0)
        narrow = hi - lo < 1e-3
        lo, hi = np.where(narrow, lo - 0.5e-3, lo), np.where(narrow, hi + 0.5e-3, hi)
        self.action_low.copy_(torch.as_tensor(np.maximum(lo, -1.0)))
        self.action_high.copy_(torch.as_tensor(np.minimum(hi, 1.0)))

    def to_action(self, tokens: torch.Tensor) -> torch.Tensor:
        """Bin indices (B, A) -> the centres mapped from [-1, 1] onto [low, high], clipped to [-1, 1]."""
        unit = self.action_tokenizer.decode(tokens.to(self.device))
        return (self.action_low + (unit + 1.0) * 0.5 * (self.action_high - self.action_low)).clamp(-1.0, 1.0)

    def tokens_of(self, action: torch.Tensor) -> torch.Tensor:
        """Actions -> the nearest bin (the inverse of :meth:`to_action` on the centres)."""
        unit = 2.0 * (action.to(self.device) - self.action_low) / (self.action_high - self.action_low) - 1.0
        return self.action_tokenizer.encode(unit)

    # -- prompts ----------------------------------------------------------------------------
    def instruction_ids(self, texts: Sequence[str]) -> torch.Tensor:
        """Instruction strings -> ids into this policy's table of instructions seen (rollout tensors)."""
        for t in texts:
            if not isinstance(t, str):
                raise ValueError(f"instructions must be strings, got {type(t).__name__}")
            if t not in self._vocab_ids:
                self._vocab_ids[t] = len(self._vocab)
                self._vocab.append(t)
        return torch.tensor([self._vocab_ids[t] for t in texts], dtype=torch.long, device=self.device)

    def features(self, obs: Mapping[str, Any]) -> Prompt:
        """``{"instruction": [str] | ids, "pixels": {camera: (B, H, W, 3) uint8}}`` -> the
        left-padded prompt batch (tokenised, the frame processed; no forward yet)."""
        if "instruction" not in obs:
            raise ValueError("the VLA reads obs['instruction']; this observation has none")
        texts = obs["instruction"]
        if isinstance(texts, torch.Tensor):
            texts = [self._vocab[i] for i in texts.tolist()]
        prompts = [self.prompt.format(instruction=str(t).strip().rstrip("?.").lower()) for t in texts]  # as OpenVLA
        if self.vision:
            if self.camera not in (obs.get("pixels") or {}):
                raise ValueError(f"obs['pixels'] lacks camera {self.camera!r} that this VLA reads")
            frames = [np.asarray(f.cpu() if isinstance(f, torch.Tensor) else f) for f in obs["pixels"][self.camera]]
            enc = self.processor(text=[(self.image_token or "") + p for p in prompts], images=frames, padding=True,
                                 return_tensors="pt")
        else:
            enc = self.tokenizer(prompts, padding=True, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in enc.items() if isinstance(v, torch.Tensor)}
        inputs.pop("token_type_ids", None)
        lengths = inputs["attention_mask"].sum(-1)
        if self.max_positions is not None and int(lengths.max()) + self.action_dim > self.max_positions:
            i = int(lengths.argmax())
            raise ValueError(f"the instruction {str(texts[i])[:60]!r} makes a prompt of {int(lengths[i])} tokens, "
                             f"which with {self.action_dim} action tokens exceeds the model's limit of "
                             f"{self.max_positions} positions (max_position_embeddings): shorten it")
        inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.actor.dtype)
        return Prompt(inputs)

    # -- the token distribution -----------------------------------------------------------
    def dist_params(self, features: Prompt) -> TokenDist:
        """The action-token distribution given the prompt; forwards run in log_prob / sample."""
        return TokenDist(features)

    def _bin_log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., V) logits -> (..., N) log-probabilities over the action ids only, at the temperature."""
        return (logits.index_select(-1, self.action_ids).float() / self.temperature).log_softmax(-1)

    def _extend(self, inputs: Mapping[str, torch.Tensor], ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """The prompt inputs with ``ids`` (B, k) appended (mask 1, positions running on)."""
        k = ids.shape[1]
        out = dict(inputs)
        out["input_ids"] = torch.cat([inputs["input_ids"], ids], 1)
        out["attention_mask"] = torch.cat([inputs["attention_mask"], inputs["attention_mask"].new_ones(len(ids), k)], 1)
        last = inputs["position_ids"][:, -1:]
        out["position_ids"] = torch.cat([inputs["position_ids"], last + torch.arange(1, k + 1, device=ids.device)], 1)
        return out

    def log_prob(self, params: TokenDist, tokens: torch.Tensor) -> torch.Tensor:
        """(B,) log-probability of the bin indices ``tokens`` (B, A): one teacher-forced forward."""
        tokens = tokens.long().to(self.device)
        prompt, a = params.prompt, self.action_dim
        inputs = self._extend(prompt.inputs, self.action_ids[tokens[:, :-1]])  # the last token is never input
        out = self.actor(**inputs, use_cache=False, output_hidden_states=True, logits_to_keep=a)
        prompt.hidden = out.hidden_states[-1][:, -a]  # the prompt's final position
        params.step_log_probs = self._bin_log_probs(out.logits[:, -a:])  # (B, A, N)
        return params.step_log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).sum(-1)

    @torch.no_grad()
    def sample(self, params: TokenDist, deterministic: bool = False) -> torch.Tensor:
        """Bin indices (B, A), one decoding step per action dimension (KV cache), each drawn
        from the action ids only (or their argmax)."""
        prompt = params.prompt
        inputs = dict(prompt.inputs)
        out = self.actor(**inputs, use_cache=True, output_hidden_states=True, logits_to_keep=1)
        prompt.hidden = out.hidden_states[-1][:, -1]
        mask, pos = inputs["attention_mask"], inputs["position_ids"][:, -1:]
        tokens, steps, kw = [], [], self._cache_kw
        for j in range(self.action_dim):
            logp = self._bin_log_probs(out.logits[:, -1])
            tok = logp.argmax(-1) if deterministic else torch.multinomial(logp.exp(), 1).squeeze(-1)
            tokens.append(tok)
            steps.append(logp)
            if j + 1 < self.action_dim:
                mask, pos = torch.cat([mask, mask.new_ones(len(mask), 1)], 1), pos + 1
                out = self.actor(input_ids=self.action_ids[tok][:, None], attention_mask=mask, position_ids=pos,
                                 use_cache=True, logits_to_keep=1, **{kw: getattr(out, kw)})
        tokens_t = torch.stack(tokens, 1)
        params.step_log_probs = torch.stack(steps, 1)
        params.sampled_log_prob = params.step_log_probs.gather(-1, tokens_t.unsqueeze(-1)).squeeze(-1).sum(-1)
        return tokens_t

    def entropy(self, params: TokenDist) -> torch.Tensor:
        """(B,) sum over the action steps of each step's entropy, given the tokens last scored or sampled."""
        if params.step_log_probs is None:
            raise ValueError("an autoregressive VLA's entropy is over the steps of scored tokens: "
                             "call log_prob(params, tokens) or sample(params) first")
        logp = params.step_log_probs
        return -(logp.exp() * logp).sum((-2, -1))

    def value_of(self, features: Prompt) -> torch.Tensor:
        """(B,) V(s) from the DETACHED hidden state at the prompt's end (a prompt forward if none ran)."""
        if self.critic is None:
            raise ValueError("this autoregressive VLA has no value head (value_head=false)")
        if features.hidden is None:
            with torch.no_grad():
                out = self.actor(**features.inputs, use_cache=False, output_hidden_states=True, logits_to_keep=1)
            features.hidden = out.hidden_states[-1][:, -1]
        return self.critic(features.hidden.detach().float()).squeeze(-1)

    # -- the Policy contract ---------------------------------------------------------------
    def numpy_to_tensors(self, obs: Obs) -> dict[str, Any]:
        instruction = obs.get("instruction")
        if instruction is None:
            raise ValueError("the VLA reads obs['instruction'] (one string per env); this observation has none")
        out: dict[str, Any] = {}
        if self.camera is not None:
            pixels = obs.get("pixels") or {}
            if self.camera not in pixels:
                raise ValueError(f"obs['pixels'] lacks camera {self.camera!r} that this VLA reads")
            frames = np.asarray(pixels[self.camera])
            if frames.ndim != 4:
                raise ValueError(f"act takes a batch: obs['pixels'][{self.camera!r}] must be (B, H, W, 3), "
                                 f"got shape {frames.shape}")
            out["pixels"] = {self.camera: frames}
        if isinstance(instruction, str):
            n = len(out["pixels"][self.camera]) if out else 1
            instruction = [instruction] * n
        out["instruction"] = list(instruction)
        return out

    @torch.no_grad()
    def step(self, obs: Obs, state: Any = None, deterministic: bool = False) -> PolicyStep:
        feats = self.features(self.numpy_to_tensors(obs))
        params = self.dist_params(feats)
        tokens = self.sample(params, deterministic)
        log_prob = self.log_prob(params, tokens) if self.rescore else params.sampled_log_prob
        value = self.value_of(feats).cpu().numpy() if self.critic is not None else None
        return PolicyStep(action=self.to_action(tokens).cpu().numpy().astype(np.float32, copy=False),
                          log_prob=log_prob.cpu().numpy(), value=value, extras={"tokens": tokens.cpu().numpy()})

    def act(self, obs: Obs, deterministic: bool = False) -> np.ndarray:
        """(B, A) actions in [-1, 1]."""
        return self.step(obs, deterministic=deterministic).action

    @torch.no_grad()
    def value(self, obs: Obs) -> np.ndarray:
        return self.value_of(self.features(self.numpy_to_tensors(obs))).cpu().numpy()

    def reset(self, env_ids=None) -> None:
        return None  # stateless
