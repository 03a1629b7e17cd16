"""VLAC: the pairwise progress-delta critic (InternRobotics 2025, "VLAC: a
Vision-Language-Action-Critic model for robotic real-world reinforcement learning").

For frames ``o[0..T]`` and a stride ``skip`` the critic is asked about the pairs
``(o[t - skip], o[t])`` on the grid ``t = skip, 2 skip, ..., T`` (``T`` always included):
"is the second image closer to achieving the task than the first?", answered by a
signed number ``c`` in percent (:func:`parse_delta`). Values start at ``V = 0`` and
accumulate (``V`` in 0..100):

- ``rule="simple"``: ``V <- V + (100 - V) * c / 100`` for every ``c``;
- ``rule="mix"`` (the published variant, called ``mix_f`` there): positive ``c`` as in
  "simple"; for ``c <= 0``, if ``V > 50``: ``V <- max(10, 100 - max(100 - V, 1) / (100 + c) * 100)``,
  else ``V <- V + V * c / 100``.

``progress = V / 100`` is interpolated linearly from the grid to all ``T + 1`` frames;
``rewards[t] = progress[t + 1] - progress[t]`` (return = final progress).

Done signal: a yes/no question per frame answered ``1`` / ``0``; with token log-probs the
score is the probability of ``1``, otherwise the answer itself; ``success = score >=
done_threshold`` (0.9 as in the published example). ``done_frames`` chooses which frames
are asked: ``"none"``, ``"last"`` (episode success, one query) or ``"grid"`` (every grid
frame; in between, a frame holds the score of the latest asked frame).

Optional reference trajectory: ``reference_frames`` of a demonstration, subsampled to
``reference_num`` frames, shown before the pair labelled 0 % ... 100 %, followed by the
episode's first frame labelled 0 %.

Prompts: the text below is the prompt format the released VLAC checkpoints were trained
with (as published in the InternRobotics/VLAC repository), so any backend VLM - the
released checkpoints served by an OpenAI-compatible server, or another model - gets the
same question. A failed pair (unparseable reply) is asked again, sampling at temperature
0.5, 1.0, ..., up to ``max_retries`` times; if it still fails, the episode is reported unlabeled (a gap cannot be
accumulated over), never filled in.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

from embodied.contracts import EpisodeLabels, RewardModel, check_frames
from rewards.backends.base import VLMBackend, VLMReply, VLMRequest
from rewards.backends.factory import make_backend
from rewards.metrics import voc

SYSTEM = (
    "You are a visual-language assistant designed to interpret spatial and task-related information "
    "from images and text. Provide precise, context-aware responses and actionable guidance to assist "
    "in achieving task objectives."
)
PAIR_PROMPT = (
    "Image-1: <image>\nImage-2: <image>\nCompare two images and evaluate whether the second image is "
    "closer to achieving task objectives compared to the first image. + score means the second image is "
    "closer, - score means the first image is closer\nResponse the relative progressing of target task "
    "follow <score>. The target task is: <task> {task} </task> <score>"
)
PAIR_WITH_START = "0% <image>\nThis image is the trajectory beginning of the following two images\n"
DONE_PROMPT = "<image>\nThe 1 means yes, the 0 means no. Check if the robot has completed its task: <task> {task} </task> <done>"
PAIR_MARKER = "Compare two images and evaluate whether the second image is closer"
DONE_MARKER = "Check if the robot has completed its task"

_DELTA = re.compile(r"^([+-]?\d+(?:\.\d+)?)\s*%?$")


class ParseError(ValueError):
    """A reply that is not a number in the expected range."""


def parse_delta(text: str) -> float:
    """The critic's reply: one signed number in [-100, 100] (an optional ``%``)."""
    s = text.strip()
    m = _DELTA.match(s)
    if m is None:
        raise ParseError(f"expected one signed number, got {s[:60]!r}")
    c = float(m.group(1))
    if not -100.0 <= c <= 100.0:
        raise ParseError(f"delta {c} is outside [-100, 100]")
    return c


def parse_done(reply: VLMReply) -> float:
    """``1`` / ``0`` (or yes / no) -> a done score in [0, 1]; the probability of yes when the
    reply carries the log-prob of its answer token."""
    s = reply.text.strip().lower().rstrip(".")
    if s in ("1", "yes"):
        answer = 1.0
    elif s in ("0", "no"):
        answer = 0.0
    else:
        raise ParseError(f"expected 1 or 0, got {reply.text.strip()[:60]!r}")
    answer_lp = [lp for tok, lp in (reply.logprobs or []) if tok.strip().lower() in ("1", "0", "yes", "no")]
    if not answer_lp:
        return answer
    p = math.exp(answer_lp[0])
    return p if answer == 1.0 else 1.0 - p


def accumulate(deltas: Sequence[float], rule: Literal["simple", "mix"] = "simple") -> np.ndarray:
    """Signed deltas (percent) -> values 0..100 starting at 0 (length ``len(deltas) + 1``)."""
    values = [0.0]
    for c in deltas:
        v = values[-1]
        if c > 0 or rule == "simple":
            v = v + (100.0 - v) * c / 100.0
        elif v > 50.0:
            v = max(10.0, 100.0 - max(100.0 - v, 1.0) / (100.0 + c) * 100.0)
        else:
            v = v + v * c / 100.0
        values.append(v)
    return np.array(values, np.float64)


def grid(num_steps: int, skip: int) -> np.ndarray:
    """Frame indices ``0, skip, 2 skip, ...`` with the last frame ``num_steps`` always included."""
    idx = list(range(0, num_steps + 1, skip))
    if idx[-1] != num_steps:
        idx.append(num_steps)
    return np.array(idx)


def _interleave(template: str, images: Sequence[np.ndarray]) -> list[str | np.ndarray]:
    pieces = template.split("<image>")
    if len(pieces) - 1 != len(images):
        raise ValueError(f"prompt has {len(pieces) - 1} image slots for {len(images)} images")
    parts: list[str | np.ndarray] = []
    for piece, image in zip(pieces, images):
        parts += [piece, image] if piece else [image]
    if pieces[-1]:
        parts.append(pieces[-1])
    return parts


def reference_prompt(task: str, num: int) -> str:
    """The in-context demonstration: ``num`` frames labelled 0 % ... 100 %."""
    labels = [int(i / (num - 1) * 100) for i in range(num)]
    return f"<trajectory> <task> {task} </task>:" + "".join(f" {p}% <image>\n" for p in labels) + "</trajectory>"


def pair_request(task: str, first: np.ndarray, second: np.ndarray, start: np.ndarray | None = None,
                 reference: Sequence[np.ndarray] = (), max_tokens: int = 16) -> VLMRequest:
    """The pairwise critic question; with a reference it shows the demo and the episode start."""
    if len(reference):
        template = reference_prompt(task, len(reference)) + PAIR_WITH_START + PAIR_PROMPT.format(task=task)
        images = [*reference, start, first, second]
    else:
        template, images = PAIR_PROMPT.format(task=task), [first, second]
    return VLMRequest(_interleave(template, images), system=SYSTEM, max_tokens=max_tokens)


def done_request(task: str, frame: np.ndarray, max_tokens: int = 4) -> VLMRequest:
    return VLMRequest(_interleave(DONE_PROMPT.format(task=task), [frame]), system=SYSTEM, max_tokens=max_tokens)


@dataclass
class _Episode:
    frames: np.ndarray
    task: str
    grid: np.ndarray
    deltas: dict[int, float] = field(default_factory=dict)  # pair position -> delta
    done: dict[int, float] = field(default_factory=dict)  # frame index -> done score
    attempts: dict[tuple[str, int], int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    failed: str | None = None
    queries: int = 0
    images: int = 0


class VLACReward(RewardModel):
    """Pairwise progress-delta critic accumulated into a dense value, plus a done signal."""

    name = "vlac"
    granularity = "pair"
    asynchronous = True

    def __init__(
        self,
        backend: VLMBackend | dict[str, Any] | None = None,
        skip: int = 1,
        rule: Literal["simple", "mix"] = "simple",
        reference_frames: np.ndarray | None = None,
        reference_num: int = 9,
        done_frames: Literal["none", "last", "grid"] = "last",
        done_threshold: float = 0.9,
        max_retries: int = 2,
        camera: str | None = None,
    ):
        """
        backend: a :class:`VLMBackend`, or a dict of ``make_backend`` kwargs (``kind`` plus settings).
        skip: stride of the pairs ``(o[t - skip], o[t])``; queries per episode ~ T / skip.
        rule: value accumulation, ``"simple"`` or ``"mix"`` (see the module docstring).
        reference_frames: optional (R, H, W, 3) uint8 demonstration of the task.
        reference_num: demonstration frames shown (evenly spaced, first and last kept).
        done_frames: which frames get the yes/no done question: ``"none"``, ``"last"``, ``"grid"``.
        done_threshold: success when the done score reaches it.
        max_retries: further queries of a pair (or done question) after an unparseable reply.
        camera: which camera's frames it reads; None: the env's first.
        """
        if backend is None:
            raise ValueError("VLACReward needs a backend: pass a VLMBackend or backend={'kind': 'hf', ...}")
        if skip < 1:
            raise ValueError(f"skip must be >= 1, got {skip}")
        if rule not in ("simple", "mix"):
            raise ValueError(f"rule must be 'simple' or 'mix', got {rule!r}")
        if done_frames not in ("none", "last", "grid"):
            raise ValueError(f"done_frames must be 'none', 'last' or 'grid', got {done_frames!r}")
        self.backend = make_backend(**backend) if isinstance(backend, dict) else backend
        self.skip, self.rule, self.done_frames = skip, rule, done_frames
        self.done_threshold, self.max_retries, self.camera = done_threshold, max_retries, camera
        self.reference: list[np.ndarray] = []
        if reference_frames is not None:
            check_frames(reference_frames, "reference_frames")
            if reference_num < 2:
                raise ValueError(f"reference_num must be >= 2, got {reference_num}")
            idx = np.round(np.linspace(0, len(reference_frames) - 1, min(reference_num, len(reference_frames))))
            self.reference = [reference_frames[int(i)] for i in np.unique(idx)]

    def _done_indices(self, ep: _Episode) -> list[int]:
        if self.done_frames == "none":
            return []
        return [int(ep.grid[-1])] if self.done_frames == "last" else [int(i) for i in ep.grid]

    def _pending(self, ep: _Episode) -> list[tuple[str, int]]:
        if ep.failed:
            return []
        pairs = [("pair", k) for k in range(len(ep.grid) - 1) if k not in ep.deltas]
        return pairs + [("done", i) for i in self._done_indices(ep) if i not in ep.done]

    def _request(self, ep: _Episode, item: tuple[str, int]) -> VLMRequest:
        kind, k = item
        if kind == "done":
            request = done_request(ep.task, ep.frames[k])
        else:
            a, b = ep.frames[ep.grid[k]], ep.frames[ep.grid[k + 1]]
            request = pair_request(ep.task, a, b, ep.frames[0], self.reference)
        # a retry samples (temperature 0.5, 1.0, ...): asked greedily again, the same question
        # would get the same reply (and hit the disk cache)
        request.temperature = min(1.0, 0.5 * ep.attempts.get(item, 0))
        return request

    def _finish(self, ep: _Episode) -> EpisodeLabels:
        T = len(ep.frames) - 1
        if ep.failed:
            return EpisodeLabels.failed(T, ep.failed, queries=ep.queries, errors=ep.errors)
        deltas = [ep.deltas[k] for k in range(len(ep.grid) - 1)]
        values = accumulate(deltas, self.rule)
        progress = np.interp(np.arange(T + 1), ep.grid, values / 100.0).astype(np.float32)
        meta: dict[str, Any] = {"deltas": np.array(deltas), "values_at": values, "frame_indices": ep.grid,
                                "voc": voc(values), "queries": ep.queries, "images": ep.images,
                                "errors": ep.errors}
        success = None
        if ep.done:
            asked = np.array(sorted(ep.done))
            scores = np.array([ep.done[i] for i in asked])
            held = np.searchsorted(asked, np.arange(T + 1), side="right") - 1  # latest asked frame <= t
            done_score = np.where(held >= 0, scores[np.clip(held, 0, None)], 0.0)
            success = done_score >= self.done_threshold
            meta["done_score"] = done_score.astype(np.float32)
        return EpisodeLabels(np.diff(progress).astype(np.float32), progress=progress, success=success, meta=meta)

    def label_episode(self, frames: np.ndarray, instruction: str) -> EpisodeLabels:
        return self.label_episodes([(frames, instruction)])[0]

    def label_episodes(self, episodes: Sequence[tuple[np.ndarray, str]]) -> list[EpisodeLabels]:
        """Label several episodes; each round of pair and done queries is one backend batch."""
        eps = []
        for frames, instruction in episodes:
            check_frames(frames)
            if len(frames) < 2:
                raise ValueError(f"an episode needs at least 2 frames (one transition), got {len(frames)}")
            if not isinstance(instruction, str) or not instruction.strip():
                raise ValueError("VLAC needs the task instruction: pass a non-empty instruction string")
            eps.append(_Episode(frames, instruction, grid(len(frames) - 1, self.skip)))
        while True:
            work = [(ep, item) for ep in eps for item in self._pending(ep)]
            if not work:
                break
            requests = [self._request(ep, item) for ep, item in work]
            replies = self.backend.generate(requests)
            for (ep, (kind, k)), request, reply in zip(work, requests, replies):
                if ep.failed:
                    continue
                ep.queries += 1
                ep.images += len(request.images)
                try:
                    if not reply.ok:
                        raise ParseError(f"backend error: {reply.error}")
                    if kind == "pair":
                        ep.deltas[k] = parse_delta(reply.text)
                    else:
                        ep.done[k] = parse_done(reply)
                except ParseError as e:
                    ep.errors.append(f"{kind} {k}: {e}")
                    ep.attempts[(kind, k)] = ep.attempts.get((kind, k), 0) + 1
                    if ep.attempts[(kind, k)] > self.max_retries:
                        ep.failed = f"VLAC {kind} query {k} failed {ep.attempts[(kind, k)]}x; last: {e}"
        return [self._finish(ep) for ep in eps]
