"""CLIP VLM-RM: a zero-shot reward from CLIP embeddings (Rocamonde et al. 2023).

Text side (computed once per instruction and cached): each goal prompt and each
baseline prompt is embedded and L2-normalised; their means are ``g`` and ``b`` (not
re-normalised); ``d = g - b`` and the projection

    P = alpha * d d^T / |d|^2 + (1 - alpha) * I

Image side: ``x`` is the L2-normalised image embedding and

    R(x) = 1 - 0.5 * |(x - g) P|^2

With ``alpha = 0`` and a unit ``g`` (one goal prompt) this is the cosine similarity
``x . g``; with ``alpha = 1`` only the component of ``x - g`` along the goal-baseline
direction counts.

``mode="contrast"`` is the "contrasting language goals" variant (VLM-RL, Huang et al.
2024): with ``p`` and ``n`` the means of the L2-normalised positive (goal) and negative
prompt embeddings,

    R(x) = w_pos * cos(x, p) - w_neg * cos(x, n)

with ``contrast_weights = (w_pos, w_neg)``, default ``(0.5, 0.5)``.

Prompts are templates: ``{instruction}`` is replaced by the task instruction; the
goal prompts default to the instruction itself.

Model loading (open_clip):
- real weights: ``model_name="ViT-B-32", pretrained="laion2b_s34b_b79k"`` (a tag that
  open_clip downloads and caches), or ``pretrained="/path/open_clip_model.safetensors"``
  (a local checkpoint file, ``.bin`` / ``.pt`` / ``.safetensors``, loaded weights-only);
- ``model_name="hf-hub:org/repo"`` or ``"local-dir:/path"`` are passed to open_clip as is;
- tests and offline smoke runs: ``model_cfg={...}`` (an open_clip model config dict with
  ``embed_dim``, ``vision_cfg``, ``text_cfg``) builds a randomly initialised model, see
  ``configs/reward/clip_tiny.yaml``.

Frames are preprocessed as one batched tensor op (uint8 resize with antialiasing, which
matches the PIL transform of open_clip to within 1-2 grey levels, centre crop and
normalisation), then scored ``batch_size`` frames at a time.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from embodied.contracts import RewardModel, check_frames

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PRECISION = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}  # open_clip's names


def goal_baseline(goal_emb: torch.Tensor, baseline_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, D) goal and (B, D) baseline text embeddings -> means ``g``, ``b`` of the
    L2-normalised rows (the means are not re-normalised)."""
    return F.normalize(goal_emb, dim=-1).mean(0), F.normalize(baseline_emb, dim=-1).mean(0)


def projection(g: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """``P = alpha * d d^T / |d|^2 + (1 - alpha) I`` with ``d = g - b``."""
    d = g - b
    eye = torch.eye(len(d), dtype=d.dtype, device=d.device)
    if alpha == 0:
        return eye
    norm2 = d @ d
    if norm2 <= 1e-12:
        raise ValueError("goal and baseline prompts embed to the same point; use different baseline_prompts")
    return alpha * torch.outer(d, d) / norm2 + (1 - alpha) * eye


def vlm_rm_reward(x: torch.Tensor, g: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """``R(x) = 1 - 0.5 * |(x - g) P|^2`` for L2-normalised image embeddings ``x`` (N, D)."""
    return 1 - 0.5 * ((x - g) @ P).pow(2).sum(-1)


def _fill(prompts: Sequence[str], instruction: str | None) -> list[str]:
    out = []
    for p in prompts:
        if "{instruction}" in p:
            if not instruction or not instruction.strip():
                raise ValueError(
                    f"prompt {p!r} needs the task instruction, but it is empty; "
                    "pass an instruction or set reward.goal_prompts explicitly"
                )
            p = p.replace("{instruction}", instruction.strip())
        out.append(p)
    return out


class CLIPReward(RewardModel):
    """Frame reward from a CLIP model; see the module docstring for the formulas."""

    name = "clip"
    granularity = "frame"
    trainable = False
    asynchronous = False

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str | None = "laion2b_s34b_b79k",
        model_cfg: dict[str, Any] | None = None,
        goal_prompts: Sequence[str] | None = None,
        baseline_prompts: Sequence[str] = ("a robot arm on a table",),
        alpha: float = 0.5,
        mode: str = "projection",
        negative_prompts: Sequence[str] = (),
        contrast_weights: Sequence[float] = (0.5, 0.5),
        batch_size: int = 64,
        device: str = "cpu",
        dtype: str = "float32",
        camera: str | None = None,
        cache_dir: str | None = None,
    ):
        """
        Args:
            model_name: open_clip architecture (``ViT-B-32``), ``hf-hub:org/repo`` or
                ``local-dir:/path``; with ``model_cfg``, the name of that custom config.
            pretrained: open_clip pretrained tag or a local checkpoint file; None for
                random weights.
            model_cfg: an open_clip model config dict (``embed_dim``, ``vision_cfg``,
                ``text_cfg``) for a custom, randomly initialised model (tests).
            goal_prompts: goal text templates; default ``["{instruction}"]``.
            baseline_prompts: baseline text templates (what every frame shows anyway).
            alpha: projection strength in [0, 1]; 0 = plain cosine similarity to ``g``.
            mode: ``"projection"`` (goal-baseline VLM-RM) or ``"contrast"`` (positive
                goal prompts vs ``negative_prompts``).
            negative_prompts: templates of the undesired outcome (``mode="contrast"``).
            contrast_weights: ``(w_pos, w_neg)`` of the contrast reward.
            batch_size: frames per forward pass.
            device: torch device for the model.
            dtype: ``float32``, ``float16`` or ``bfloat16`` model weights.
            camera: which camera's frames the reward reads (None: the env's first).
            cache_dir: open_clip download cache for pretrained tags.
        """
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if mode not in ("projection", "contrast"):
            raise ValueError(f"mode must be 'projection' or 'contrast', got {mode!r}")
        if mode == "projection" and alpha > 0 and not baseline_prompts:
            raise ValueError("alpha > 0 needs baseline_prompts; give at least one or set alpha=0")
        if mode == "contrast" and not negative_prompts:
            raise ValueError("mode='contrast' needs negative_prompts (the undesired outcome)")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.goal_prompts = list(goal_prompts) if goal_prompts else ["{instruction}"]
        self.baseline_prompts = list(baseline_prompts)
        self.negative_prompts = list(negative_prompts)
        self.alpha = float(alpha)
        self.mode = mode
        self.contrast_weights = tuple(float(w) for w in contrast_weights)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.camera = camera
        self.model, self.tokenizer = _load_model(model_name, pretrained, model_cfg, self.device, dtype, cache_dir)
        self._input_dtype = next(self.model.visual.parameters()).dtype
        self._setup_preprocess()
        self._text_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # ----------------------------------------------------------------- preprocessing
    def _setup_preprocess(self) -> None:
        cfg = self.model.visual.preprocess_cfg
        size = cfg["size"]
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        self.resize_mode = cfg.get("resize_mode", "shortest")
        if self.resize_mode not in ("shortest", "squash"):
            raise ValueError(f"CLIP preprocessing resize_mode {self.resize_mode!r} is not supported (shortest, squash)")
        self.interpolation = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"
        mean = torch.tensor(cfg["mean"], dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(cfg["std"], dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        # x / 255 - mean) / std  ==  x * scale + shift
        self._scale, self._shift = 1.0 / (255.0 * std), -mean / std

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, 3, S, S) normalised model input on the device."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 3, 1, 2)
        h, w = x.shape[-2:]
        th, tw = self.image_size
        if self.resize_mode == "squash":
            new = (th, tw)
        elif th == tw:  # torchvision Resize(int): shortest side -> size, keep aspect ratio
            new = (th, int(th * w / h)) if h <= w else (int(th * h / w), th)
        else:
            scale = max(th / h, tw / w)
            new = (round(h * scale), round(w * scale))
        if (h, w) != new:
            x = self._resize(x, new)
        top, left = int(round((new[0] - th) / 2.0)), int(round((new[1] - tw) / 2.0))
        x = x[..., top : top + th, left : left + tw]
        # one contiguous float buffer, normalised in place (3x faster than x.float() * s + b)
        out = torch.empty(x.shape, dtype=torch.float32, device=self.device).copy_(x)
        return out.mul_(self._scale).add_(self._shift).to(self._input_dtype)

    def _resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if x.device.type == "cpu":  # uint8 antialiased kernels: PIL's arithmetic, and fast
            return F.interpolate(x, size=size, mode=self.interpolation, antialias=True)
        y = F.interpolate(x.float(), size=size, mode=self.interpolation, antialias=True)
        return y.clamp_(0, 255).round_()

    # ----------------------------------------------------------------- embeddings
    @torch.inference_mode()
    def embed_text(self, prompts: list[str]) -> torch.Tensor:
        """Raw (unnormalised) float32 text embeddings (len(prompts), D)."""
        tokens = self.tokenizer(prompts).to(self.device)
        return self.model.encode_text(tokens).float()

    @torch.inference_mode()
    def embed_images(self, frames: np.ndarray) -> torch.Tensor:
        """L2-normalised float32 image embeddings (N, D) of uint8 frames, batched."""
        out = [
            F.normalize(self.model.encode_image(self.preprocess(frames[i : i + self.batch_size])).float(), dim=-1)
            for i in range(0, len(frames), self.batch_size)
        ]
        return torch.cat(out)

    def text_targets(self, instruction: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached per instruction: ``(g, P)`` in projection mode, ``(p, n)`` in contrast mode."""
        key = instruction or ""
        if key not in self._text_cache:
            goal = self.embed_text(_fill(self.goal_prompts, instruction))
            if self.mode == "contrast":
                neg = self.embed_text(_fill(self.negative_prompts, instruction))
                self._text_cache[key] = goal_baseline(goal, neg)
            else:
                base = self.embed_text(_fill(self.baseline_prompts, instruction)) if self.baseline_prompts else goal
                g, b = goal_baseline(goal, base)
                self._text_cache[key] = (g, projection(g, b, self.alpha))
        return self._text_cache[key]

    # ----------------------------------------------------------------- reward
    def rewards_from_embeddings(self, x: torch.Tensor, instruction: str | None) -> torch.Tensor:
        """Reward of L2-normalised image embeddings ``x`` (N, D)."""
        a, b = self.text_targets(instruction)
        if self.mode == "contrast":
            w_pos, w_neg = self.contrast_weights
            return w_pos * F.cosine_similarity(x, a[None], dim=-1) - w_neg * F.cosine_similarity(x, b[None], dim=-1)
        return vlm_rm_reward(x, a, b)

    def score_frames(self, frames: np.ndarray, instruction: str) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N,) float32 rewards."""
        check_frames(frames)
        if len(frames) == 0:
            return np.zeros(0, np.float32)
        x = self.embed_images(frames)
        return self.rewards_from_embeddings(x, instruction).cpu().numpy().astype(np.float32)


def _load_model(model_name, pretrained, model_cfg, device, dtype, cache_dir):
    try:
        import open_clip
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("reward=clip needs open_clip: pip install open_clip_torch") from e
    if model_cfg is not None:
        model_cfg = dict(model_cfg)
        missing = {"embed_dim", "vision_cfg", "text_cfg"} - set(model_cfg)
        if missing:
            raise ValueError(f"model_cfg is missing {sorted(missing)}; it needs embed_dim, vision_cfg and text_cfg")
        # register under a content-derived name so a custom config never shadows a builtin one
        text = json.dumps(model_cfg, sort_keys=True)
        model_name = f"{model_name}-custom-{hashlib.sha1(text.encode()).hexdigest()[:10]}"
        folder = Path(tempfile.gettempdir()) / "embodied_open_clip_cfgs"
        folder.mkdir(exist_ok=True)
        path = folder / f"{model_name}.json"
        if not path.exists():
            tmp = path.with_suffix(f".tmp{id(path)}")
            tmp.write_text(text)
            tmp.replace(path)
        open_clip.add_model_config(path)
    elif pretrained and Path(pretrained).suffix in (".bin", ".pt", ".pth", ".safetensors") and not Path(pretrained).is_file():
        raise FileNotFoundError(f"CLIP checkpoint {pretrained} not found; fix reward.pretrained")
    try:
        model = open_clip.create_model(
            model_name, pretrained=pretrained or None, precision=PRECISION[dtype], device=device, cache_dir=cache_dir
        )
    except RuntimeError as e:  # unknown name or tag, failed download: a setting to fix
        raise ValueError(
            f"could not build CLIP model {model_name!r} with pretrained={pretrained!r}: {e}. "
            "Offline? set reward.pretrained to a local checkpoint file, or use reward=clip_tiny"
        ) from e
    model.train(False).requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(model_name, context_length=model.context_length)
    return model, tokenizer
