"""RL-VLM-F: a reward network learned from VLM preferences over image pairs (Wang et al. 2024).

Labels. Each pair of frames is labeled by two queries to a VLM backend
(:mod:`rewards.backends`):

1. *analysis* (both images + text): describe each image and say how they differ with
   respect to the goal;
2. *label* (text only, quoting the analysis): answer ``0`` if the goal is better achieved
   in image 1, ``1`` if in image 2, ``-1`` if there is no difference or it is unsure.

:func:`parse_label` reads the second reply; anything it cannot read unambiguously is
``-1``. Pairs labeled ``-1`` and pairs of identical frames are dropped.
:class:`ScriptedPreference` is a separate oracle (no text, no VLM): it labels from true
progress and flips labels with a configurable error rate, for the offline pipeline and
tests; ``labeler="scripted"`` selects it.

Reward model. :class:`BTEnsemble`: ``ensemble_size`` (3) small CNNs on ``image_size``
(64) square frames, each trained with the Bradley-Terry loss (cross-entropy of the
softmax over the two predicted rewards against the preferred index), Adam 3e-4, until
training-label accuracy exceeds ``target_accuracy`` (0.97) or ``max_epochs``; a held-out
split (``holdout``) stops training early when its loss stops improving (``patience``)
and the best weights are kept. The reward of a frame is the ensemble mean (optionally
standardised over the preference frames, ``normalize``).

Online schedule (PEBBLE): the training loop calls :meth:`RLVLMFReward.feedback_round`
every ``feedback_every`` env steps with ``feedback_queries`` pairs (reward config keys
read by :mod:`embodied.labeling`); a round samples pairs of frames from two of the
``recent_episodes`` most recent episodes of the replay, labels them, retrains the
ensemble on all preferences so far and relabels the whole replay with the ensemble mean.
Until the first round has trained the ensemble, :meth:`score_frames` returns zeros.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from embodied.contracts import TrainableReward, check_frames

ANALYSIS_PROMPT = (
    "You are shown two images of a robot attempting a task. The goal is: {instruction}.\n"
    "Image 1:\n{image1}\nImage 2:\n{image2}\n"
    "1. Describe what Image 1 shows.\n"
    "2. Describe what Image 2 shows.\n"
    "3. The goal is: {instruction}. How do Image 1 and Image 2 differ with respect to achieving this goal?"
)
LABEL_PROMPT = (
    "Here is an analysis of two images of a robot attempting the goal: {instruction}.\n"
    "--- analysis ---\n{analysis}\n--- end of analysis ---\n"
    "Based on this analysis, in which image is the goal better achieved? Reply with a single line: "
    "0 if the goal is better achieved in Image 1, 1 if it is better achieved in Image 2, "
    "-1 if there is no difference or the analysis is unsure."
)
_LABEL_TOKEN = re.compile(r"(?<![\w.%-])(-1|0|1)(?![\w%]|\.\d)")


def parse_label(text: str | None) -> int:
    """Stage-2 reply -> 0, 1 or -1. A reply is read only when it names exactly one of the
    three labels (``"1"``, ``"Answer: 0."``, ``"-1"``); empty, missing or ambiguous replies
    (``"0 or 1"``, prose without a label) are -1."""
    if not text:
        return -1
    found = set(_LABEL_TOKEN.findall(text))
    return int(found.pop()) if len(found) == 1 else -1


def analysis_request(frame_a: np.ndarray, frame_b: np.ndarray, instruction: str, max_tokens: int = 512):
    from rewards.backends.base import VLMRequest

    head, rest = ANALYSIS_PROMPT.split("{image1}")
    mid, tail = rest.split("{image2}")
    fill = lambda s: s.replace("{instruction}", instruction)  # noqa: E731
    return VLMRequest([fill(head), frame_a, fill(mid), frame_b, fill(tail)], max_tokens=max_tokens)


def label_request(analysis: str, instruction: str):
    from rewards.backends.base import VLMRequest

    text = LABEL_PROMPT.replace("{instruction}", instruction).replace("{analysis}", analysis.strip())
    return VLMRequest([text], max_tokens=16)


class ScriptedPreference:
    """Oracle labels from true progress (looked up by image content), no text involved.

    ``0`` if frame a has more progress, ``1`` if frame b has, ``-1`` if equal or unknown;
    a decided label is flipped with probability ``error_rate`` (seeded).
    """

    def __init__(self, progress: Mapping[str, float] | None = None, error_rate: float = 0.0, seed: int = 0):
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
        self.progress = dict(progress or {})
        self.error_rate = error_rate
        self.rng = np.random.default_rng(seed)

    def add_episode(self, frames: np.ndarray, progress: Sequence[float]) -> None:
        from rewards.backends.base import hash_image

        if len(frames) != len(progress):
            raise ValueError(f"one progress value per frame: {len(frames)} frames, {len(progress)} values")
        self.progress.update({hash_image(f): float(p) for f, p in zip(frames, progress)})

    def label_pairs(self, frames_a: np.ndarray, frames_b: np.ndarray, instruction: str | None = None) -> np.ndarray:
        from rewards.backends.base import hash_image

        pa = np.array([self.progress.get(hash_image(f), np.nan) for f in frames_a])
        pb = np.array([self.progress.get(hash_image(f), np.nan) for f in frames_b])
        return noisy_labels(pa, pb, self.error_rate, self.rng)


def noisy_labels(pa: np.ndarray, pb: np.ndarray, error_rate: float, rng: np.random.Generator) -> np.ndarray:
    """0 where ``pa > pb``, 1 where ``pb > pa``, -1 where equal or NaN; decided labels flip
    with probability ``error_rate``."""
    labels = np.where(pa > pb, 0, np.where(pb > pa, 1, -1)).astype(np.int64)
    flip = (labels >= 0) & (rng.random(len(labels)) < error_rate)
    labels[flip] = 1 - labels[flip]
    return labels


def reward_cnn(image_size: int) -> nn.Module:
    """A small CNN: (N, 3, S, S) float in [0, 1] -> (N,) reward."""
    conv = nn.Sequential(
        nn.Conv2d(3, 16, 4, stride=2), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2), nn.ReLU(),
        nn.Flatten(),
    )
    with torch.no_grad():
        n = conv(torch.zeros(1, 3, image_size, image_size)).shape[1]
    return nn.Sequential(conv, nn.Linear(n, 128), nn.ReLU(), nn.Linear(128, 1), nn.Flatten(0))


class BTEnsemble(nn.Module):
    """Bradley-Terry reward ensemble on uint8 frames."""

    def __init__(self, ensemble_size: int = 3, image_size: int = 64, lr: float = 3e-4, batch_size: int = 64,
                 max_epochs: int = 50, target_accuracy: float = 0.97, holdout: float = 0.1, patience: int = 5,
                 device: str = "cpu", seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.image_size, self.batch_size, self.max_epochs = image_size, batch_size, max_epochs
        self.target_accuracy, self.holdout, self.patience = target_accuracy, holdout, patience
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)
        self.members = nn.ModuleList(reward_cnn(image_size) for _ in range(ensemble_size)).to(self.device)
        self.optims = [torch.optim.Adam(m.parameters(), lr=lr) for m in self.members]

    def resize(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, S, S, 3) uint8 network input size (antialiased)."""
        if frames.shape[1:3] == (self.image_size, self.image_size):
            return frames
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        x = F.interpolate(x, size=(self.image_size,) * 2, mode="bilinear", antialias=True)
        return x.permute(0, 2, 3, 1).contiguous().numpy()

    def _input(self, frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(self.resize(frames))).to(self.device)
        return x.permute(0, 3, 1, 2).float().div_(255.0)

    def forward(self, frames: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (M, N) rewards of every member."""
        x = self._input(frames)
        return torch.stack([m(x) for m in self.members])

    @torch.no_grad()
    def predict(self, frames: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Ensemble-mean reward (N,) float32."""
        self.train(False)
        out = [self(frames[i : i + batch_size]).mean(0) for i in range(0, len(frames), batch_size)]
        return torch.cat(out).cpu().numpy().astype(np.float32) if out else np.zeros(0, np.float32)

    def _pair_logits(self, member: nn.Module, a: np.ndarray, b: np.ndarray) -> torch.Tensor:
        return torch.stack([member(self._input(a)), member(self._input(b))], dim=1)  # (N, 2)

    @torch.no_grad()
    def _evaluate(self, a: np.ndarray, b: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """Mean BT loss and label accuracy over members."""
        if len(y) == 0:
            return float("nan"), float("nan")
        self.train(False)
        target = torch.as_tensor(y, device=self.device)
        losses, accs = [], []
        for m in self.members:
            logits = torch.cat([self._pair_logits(m, a[i : i + 256], b[i : i + 256]) for i in range(0, len(y), 256)])
            losses.append(F.cross_entropy(logits, target).item())
            accs.append((logits.argmax(1) == target).float().mean().item())
        return float(np.mean(losses)), float(np.mean(accs))

    def fit(self, frames_a: np.ndarray, frames_b: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Train on pairs labeled 0 (a preferred) / 1 (b preferred); returns named metrics."""
        n = len(labels)
        if n == 0:
            raise ValueError("no preference pairs to train on (all labels were -1 or pairs identical)")
        a, b = self.resize(frames_a), self.resize(frames_b)
        perm = self.rng.permutation(n)
        n_val = int(round(self.holdout * n)) if n >= 10 else 0
        val, train = perm[:n_val], perm[n_val:]
        best_val, best_state, stale = float("inf"), None, 0
        epoch, train_acc = 0, 0.0
        for epoch in range(1, self.max_epochs + 1):
            self.train()
            for m, opt in zip(self.members, self.optims):
                order = self.rng.permutation(train)  # each member sees its own shuffle
                for i in range(0, len(order), self.batch_size):
                    idx = order[i : i + self.batch_size]
                    bt_loss = F.cross_entropy(self._pair_logits(m, a[idx], b[idx]),
                                              torch.as_tensor(labels[idx], device=self.device))
                    opt.zero_grad()
                    bt_loss.backward()
                    opt.step()
            train_loss, train_acc = self._evaluate(a[train], b[train], labels[train])
            if n_val:
                val_loss, _ = self._evaluate(a[val], b[val], labels[val])
                if val_loss < best_val - 1e-4:
                    best_val, stale = val_loss, 0
                    best_state = {k: v.detach().clone() for k, v in self.members.state_dict().items()}
                else:
                    stale += 1
                if stale >= self.patience:
                    break
            if train_acc > self.target_accuracy:
                break
        if best_state is not None and stale > 0:
            self.members.load_state_dict(best_state)
        train_loss, train_acc = self._evaluate(a[train], b[train], labels[train])
        val_loss, val_acc = self._evaluate(a[val], b[val], labels[val])
        return {"epochs": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
                "val_acc": val_acc, "pairs": n}


class RLVLMFReward(TrainableReward):
    """Preference-learned frame reward; see the module docstring."""

    name = "rlvlmf"
    granularity = "frame"
    asynchronous = False

    def __init__(
        self,
        backend: Mapping[str, Any] | Any | None = None,
        labeler: str = "vlm",
        oracle_error_rate: float = 0.0,
        recent_episodes: int = 10,
        ensemble_size: int = 3,
        image_size: int = 64,
        lr: float = 3e-4,
        batch_size: int = 64,
        max_epochs: int = 50,
        target_accuracy: float = 0.97,
        holdout: float = 0.1,
        patience: int = 5,
        normalize: bool = False,
        instruction: str | None = None,
        camera: str | None = None,
        device: str = "cpu",
        seed: int = 0,
    ):
        """
        Args:
            backend: VLM backend config (``{kind: hf|openai|scripted, ...}`` for
                :func:`rewards.backends.make_backend`) or a backend object.
            labeler: ``"vlm"`` (two-stage queries) or ``"scripted"`` (the progress oracle
                :class:`ScriptedPreference`, reachable as ``self.oracle``).
            oracle_error_rate: label flip probability of the scripted oracle.
            recent_episodes: pairs are drawn from this many most recent episodes.
            ensemble_size, image_size, lr, batch_size, max_epochs, target_accuracy,
            holdout, patience: the :class:`BTEnsemble` and its training.
            normalize: standardise rewards with the mean/std over the preference frames.
            instruction: task text when the replay stores none.
            camera: camera the reward reads (None: the replay's first).
            device: torch device of the ensemble.
            seed: seeds the ensemble init, pair sampling and oracle noise.
        """
        if labeler not in ("vlm", "scripted"):
            raise ValueError(f"labeler must be 'vlm' or 'scripted', got {labeler!r}")
        if recent_episodes < 1:
            raise ValueError(f"recent_episodes must be >= 1, got {recent_episodes}")
        self.labeler, self.recent_episodes, self.normalize = labeler, recent_episodes, normalize
        self.instruction, self.camera = instruction, camera
        self._backend_cfg, self._backend = (dict(backend), None) if isinstance(backend, Mapping) else (None, backend)
        self.oracle = ScriptedPreference(error_rate=oracle_error_rate, seed=seed) if labeler == "scripted" else None
        self.ensemble = BTEnsemble(ensemble_size, image_size, lr, batch_size, max_epochs, target_accuracy,
                                   holdout, patience, device, seed)
        self.rng = np.random.default_rng(seed + 1)
        s = image_size
        self.pairs_a = np.zeros((0, s, s, 3), np.uint8)
        self.pairs_b = np.zeros((0, s, s, 3), np.uint8)
        self.labels = np.zeros(0, np.int64)
        self.trained = False
        self.stats = np.array([0.0, 1.0])  # reward mean, std used when normalize

    # ----------------------------------------------------------------- labels
    @property
    def backend(self):
        if self._backend is None:
            if not self._backend_cfg:
                raise ValueError("rlvlmf with labeler='vlm' needs reward.backend ({kind: hf|openai|scripted, ...})")
            from rewards.backends import make_backend

            self._backend = make_backend(**self._backend_cfg)
        return self._backend

    def label_pairs(self, frames_a: np.ndarray, frames_b: np.ndarray, instruction: str) -> np.ndarray:
        """Label frame pairs: 0 (a better), 1 (b better), -1 (unsure, unparseable or failed)."""
        check_frames(frames_a, "frames_a")
        check_frames(frames_b, "frames_b")
        if len(frames_a) != len(frames_b):
            raise ValueError(f"frames_a and frames_b must pair up, got {len(frames_a)} and {len(frames_b)}")
        if self.oracle is not None:
            return self.oracle.label_pairs(frames_a, frames_b, instruction)
        if not instruction or not instruction.strip():
            raise ValueError("RL-VLM-F queries need the task instruction; set reward.instruction")
        labels = np.full(len(frames_a), -1, np.int64)
        replies = self.backend.generate([analysis_request(a, b, instruction) for a, b in zip(frames_a, frames_b)])
        ok = [i for i, r in enumerate(replies) if r.ok and r.text.strip()]
        second = self.backend.generate([label_request(replies[i].text, instruction) for i in ok]) if ok else []
        for i, reply in zip(ok, second):
            labels[i] = parse_label(reply.text) if reply.ok else -1
        return labels

    def add_preferences(self, frames_a: np.ndarray, frames_b: np.ndarray, labels: np.ndarray) -> dict[str, int]:
        """Keep pairs labeled 0/1 whose frames differ; returns how many were kept / dropped."""
        labels = np.asarray(labels, np.int64)
        identical = np.array([np.array_equal(a, b) for a, b in zip(frames_a, frames_b)], bool)
        keep = (labels >= 0) & ~identical
        self.pairs_a = np.concatenate([self.pairs_a, self.ensemble.resize(frames_a[keep])])
        self.pairs_b = np.concatenate([self.pairs_b, self.ensemble.resize(frames_b[keep])])
        self.labels = np.concatenate([self.labels, labels[keep]])
        return {"kept": int(keep.sum()), "dropped_unsure": int(((labels < 0) & ~identical).sum()),
                "dropped_identical": int(identical.sum())}

    def train_reward(self) -> dict[str, float]:
        """Fit the ensemble on every preference collected so far."""
        metrics = self.ensemble.fit(self.pairs_a, self.pairs_b, self.labels)
        self.trained = True
        if self.normalize:
            r = self.ensemble.predict(np.concatenate([self.pairs_a, self.pairs_b]))
            self.stats = np.array([r.mean(), max(r.std(), 1e-6)])
        return metrics

    # ----------------------------------------------------------------- reward
    def score_frames(self, frames: np.ndarray, instruction: str | None = None) -> np.ndarray:
        check_frames(frames)
        if not self.trained:
            return np.zeros(len(frames), np.float32)
        r = self.ensemble.predict(frames)
        return ((r - self.stats[0]) / self.stats[1]).astype(np.float32) if self.normalize else r

    # ----------------------------------------------------------------- online rounds
    def fit_on_episodes(self, episodes: Sequence[np.ndarray], num_pairs: int, instruction: str,
                        seed: int = 0) -> dict[str, float]:
        """Offline feedback: label ``num_pairs`` random frame pairs drawn from two different
        episodes (each a (T, H, W, 3) uint8 array), then fit the ensemble on them."""
        if len(episodes) < 2:
            raise ValueError("preference labeling needs at least two episodes")
        rng = np.random.default_rng(seed)
        ia, ib = (rng.integers(len(episodes), size=num_pairs) for _ in range(2))
        ib = np.where(ia == ib, (ib + 1) % len(episodes), ib)
        frames_a = np.stack([episodes[e][rng.integers(len(episodes[e]))] for e in ia])
        frames_b = np.stack([episodes[e][rng.integers(len(episodes[e]))] for e in ib])
        labels = self.label_pairs(frames_a, frames_b, instruction)
        metrics: dict[str, float] = {**self.add_preferences(frames_a, frames_b, labels), "pairs": num_pairs}
        metrics.update({k: float(v) for k, v in self.train_reward().items()})
        return metrics

    def sample_pairs(self, replay, num_pairs: int) -> tuple[np.ndarray, np.ndarray]:
        """Slot pairs (a, b): frames from two different episodes among the most recent ones
        (two frames of one episode when only one is stored)."""
        from embodied.replay import recent_episode_pairs

        return recent_episode_pairs(replay, num_pairs, self.recent_episodes, self.rng)

    def feedback_round(self, replay, num_queries: int) -> dict[str, float]:
        """Sample pairs, label them, retrain the ensemble, relabel the whole replay."""
        camera = self.camera or replay.cameras[0]
        slots_a, slots_b = self.sample_pairs(replay, num_queries)
        frames_a = replay.frames(slots_a, camera, next=False)
        frames_b = replay.frames(slots_b, camera, next=False)
        instruction = self._instruction(replay, slots_a[0]) if num_queries else ""
        counts = self.add_preferences(frames_a, frames_b, self.label_pairs(frames_a, frames_b, instruction))
        metrics: dict[str, float] = {"queries": num_queries, **counts, "dataset": len(self.labels)}
        if len(self.labels):
            metrics.update(self.train_reward())
            replay.relabel(lambda batch: self.score_frames(batch["next_obs"]["pixels"][camera]))
            metrics["relabeled"] = replay.num_labeled()
        return metrics

    def _instruction(self, replay, slot: int) -> str:
        if getattr(replay, "has_instruction", False) and replay.vocab:
            return replay.vocab[int(replay.obs["instruction"][slot])]
        return self.instruction or ""

    # ----------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {"ensemble": self.ensemble.members.state_dict(), "pairs_a": self.pairs_a, "pairs_b": self.pairs_b,
                "labels": self.labels, "stats": self.stats, "trained": self.trained}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.ensemble.members.load_state_dict(state["ensemble"])
        self.pairs_a, self.pairs_b = np.asarray(state["pairs_a"]), np.asarray(state["pairs_b"])
        self.labels = np.asarray(state["labels"], np.int64)
        self.stats = np.asarray(state["stats"], np.float64)
        self.trained = bool(state["trained"])
