"""GVL: Generative Value Learning (Ma et al. 2024, "VLMs are in-context value learners").

One VLM query per episode asks for a task-completion percentage for every frame:

1. subsample the ``T + 1`` frames to ``num_frames`` evenly spaced ones (first and last kept);
2. show the first frame as the *initial scene*, stated to be 0 % complete;
3. show the other frames in an order shuffled by a seeded RNG, numbered ``Frame 1..K``;
4. parse one line ``Frame k: v%`` per shown frame (:func:`parse_reply`, strict);
5. undo the shuffle, prepend the anchor's 0 %, interpolate linearly to all ``T + 1``
   frames (``progress`` in [0, 1]);
6. reward ``r[t] = progress[t + 1] - progress[t]``: a dense reward in progress units,
   so an episode's return is its final predicted progress (potential-based shaping with
   the predicted progress as the potential and no discount).

A reply that breaks the format (wrong frame count, a refusal, a value outside 0-100, a
malformed ``Frame`` line) is a failed query: it is asked again with a fresh shuffle up to
``max_retries`` times, then reported as :meth:`EpisodeLabels.failed`. Replies are never
repaired or rescaled. Few-shot context: complete trajectories of other tasks shown, also
shuffled, with their true percentages before the query.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from embodied.contracts import EpisodeLabels, RewardModel, check_frames
from rewards.backends.base import VLMBackend, VLMReply, VLMRequest, hash_image
from rewards.backends.factory import make_backend
from rewards.metrics import voc

SYSTEM = (
    "You are an expert roboticist who estimates how far a robot has progressed on a task "
    "from single camera frames."
)
INTRO = (
    "Predict the task completion percentage of frames from a robot performing the task: {task}. "
    "A percentage is a number between 0 and 100, where 0 means nothing of the task is done and "
    "100 means the task is fully completed. The frames are shown in random order, so judge each "
    "frame on its own when estimating its completion percentage.\n"
)
CONTEXT_HEADER = "Example trajectory of the task: {task}. Its frames (in random order) with their completion percentages:\n"
ANCHOR = "Initial robot scene: "
ANCHOR_NOTE = "\nIn the initial robot scene the task completion percentage is 0.\n"
QUERY = (
    "Now, for the task: {task}, output the task completion percentage of each of the following "
    "{n} frames, which are in random order. Answer with exactly one line per frame in the format "
    "'Frame <number>: <percentage>%' and nothing else.\n"
)
QUERY_MARKER = "output the task completion percentage of each of the following"

_FRAME_LINE = re.compile(r"^Frame\s+(\d+)\s*:\s*(-?\d+(?:\.\d+)?)\s*%$")


class ParseError(ValueError):
    """A reply that does not follow the answer format; the message says how."""


def parse_reply(text: str, num_frames: int) -> np.ndarray:
    """``Frame k: v%`` lines for k = 1..num_frames -> (num_frames,) percentages.

    Lines that do not begin with ``Frame`` (a preamble, markdown fences) are ignored;
    a ``Frame`` line must match the format exactly. Raises :class:`ParseError` on a
    malformed line, a repeated or out-of-range frame number, a missing frame, or a
    value outside [0, 100].
    """
    values: dict[int, float] = {}
    for raw in text.splitlines():
        line = raw.strip().strip("*").strip()
        if not line.lower().startswith("frame"):
            continue
        match = _FRAME_LINE.match(line)
        if match is None:
            raise ParseError(f"malformed line {line[:60]!r}; expected 'Frame <k>: <v>%'")
        k, v = int(match.group(1)), float(match.group(2))
        if not 1 <= k <= num_frames:
            raise ParseError(f"frame number {k} outside 1..{num_frames}")
        if k in values:
            raise ParseError(f"frame {k} answered twice")
        if not 0.0 <= v <= 100.0:
            raise ParseError(f"frame {k}: {v}% is outside 0-100")
        values[k] = v
    if not values:
        raise ParseError(f"no 'Frame <k>: <v>%' lines (refusal or free text): {text.strip()[:80]!r}")
    if len(values) != num_frames:
        missing = sorted(set(range(1, num_frames + 1)) - set(values))
        raise ParseError(f"answered {len(values)} of {num_frames} frames; missing {missing[:10]}")
    return np.array([values[k] for k in range(1, num_frames + 1)], np.float64)


def subsample(num_steps: int, num_frames: int) -> np.ndarray:
    """Indices of ``num_frames`` evenly spaced frames of ``0..num_steps`` (both ends kept)."""
    return np.unique(np.round(np.linspace(0, num_steps, min(num_frames, num_steps + 1))).astype(int))


def unshuffle(shuffled_values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Answers for frames shown in ``order`` (``order[j]`` = chronological index of shown
    frame ``j``) -> answers in chronological order."""
    out = np.empty_like(shuffled_values)
    out[order] = shuffled_values
    return out


def build_request(
    task: str,
    anchor: np.ndarray,
    shown: Sequence[np.ndarray],
    context: Sequence[tuple[str, Sequence[np.ndarray], Sequence[float]]] = (),
    max_tokens: int = 512,
) -> VLMRequest:
    """The GVL prompt: intro, optional few-shot trajectories, the 0 % anchor, the query frames.

    ``context`` holds ``(task, frames, percentages)`` triples, already in display order.
    """
    parts: list[str | np.ndarray] = [INTRO.format(task=task)]
    for ctx_task, frames, percents in context:
        parts.append(CONTEXT_HEADER.format(task=ctx_task))
        for j, (frame, pct) in enumerate(zip(frames, percents), start=1):
            parts += [f"Frame {j}: ", frame, f" Task completion: {pct:.0f}%\n"]
    parts += [ANCHOR, anchor, ANCHOR_NOTE, QUERY.format(task=task, n=len(shown))]
    for j, frame in enumerate(shown, start=1):
        parts += [f"Frame {j}: ", frame, "\n"]
    return VLMRequest(parts, system=SYSTEM, max_tokens=max_tokens, temperature=0.0)


@dataclass
class _Query:
    """One episode's pending GVL query."""

    frames: np.ndarray
    instruction: str
    indices: np.ndarray  # chronological frame indices queried (indices[0] == 0 is the anchor)
    seed: int  # per-episode seed derived from the frames
    attempts: int = 0
    order: np.ndarray | None = None  # current shuffle of indices[1:] positions
    errors: list[str] | None = None


class GVLReward(RewardModel):
    """Episode-level progress and dense reward from one shuffled-frames VLM query."""

    name = "gvl"
    granularity = "episode"
    asynchronous = True

    def __init__(
        self,
        backend: VLMBackend | dict[str, Any] | None = None,
        num_frames: int = 30,
        max_retries: int = 2,
        seed: int = 0,
        context: Sequence[tuple[np.ndarray, str]] | Sequence[tuple[np.ndarray, str, Sequence[float]]] = (),
        context_frames: int = 10,
        max_tokens: int = 512,
        camera: str | None = None,
    ):
        """
        backend: a :class:`VLMBackend`, or a dict of ``make_backend`` kwargs (``kind`` plus settings).
        num_frames: frames shown per episode, the 0 % anchor included (30 in the paper).
        max_retries: further queries (each with a fresh shuffle) after a failed reply.
        seed: seeds the shuffles; together with the frames it fixes every prompt, so a
            relabel hits the disk cache.
        context: few-shot trajectories ``(frames, task)`` (progress assumed linear in time,
            as for complete demonstrations) or ``(frames, task, progress in [0, 1] per frame)``.
        context_frames: frames shown per few-shot trajectory.
        max_tokens: generation limit of the reply (30 lines of ``Frame k: v%`` take ~300 tokens).
        camera: which camera's frames it reads; None: the env's first.
        """
        if num_frames < 2:
            raise ValueError(f"num_frames must be >= 2 (the anchor and one queried frame), got {num_frames}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if backend is None:
            raise ValueError("GVLReward needs a backend: pass a VLMBackend or backend={'kind': 'openai', ...}")
        self.backend = make_backend(**backend) if isinstance(backend, dict) else backend
        self.num_frames, self.max_retries, self.seed = num_frames, max_retries, seed
        self.max_tokens = max_tokens
        self.camera = camera
        self._context = [self._prepare_context(c, context_frames, i) for i, c in enumerate(context)]

    def _prepare_context(self, item, num_frames: int, i: int):
        frames, task = item[0], item[1]
        check_frames(frames, f"context[{i}] frames")
        n = len(frames)
        progress = np.asarray(item[2], np.float64) if len(item) > 2 else np.linspace(0.0, 1.0, n)
        if progress.shape != (n,):
            raise ValueError(f"context[{i}] progress must have one value per frame ({n}), got {progress.shape}")
        idx = subsample(n - 1, num_frames)
        rng = np.random.default_rng([self.seed, 7919, i])
        idx = idx[rng.permutation(len(idx))]
        return task, [frames[j] for j in idx], [100.0 * progress[j] for j in idx]

    # -- one query ---------------------------------------------------------------------
    def _request(self, q: _Query) -> VLMRequest:
        rng = np.random.default_rng([self.seed, q.seed, q.attempts])
        q.order = 1 + rng.permutation(len(q.indices) - 1)  # positions in q.indices, anchor excluded
        shown = [q.frames[q.indices[j]] for j in q.order]
        return build_request(q.instruction, q.frames[0], shown, self._context, self.max_tokens)

    def _labels(self, q: _Query, percents_shown: np.ndarray, reply: VLMReply) -> EpisodeLabels:
        T = len(q.frames) - 1
        at_indices = np.zeros(len(q.indices))
        at_indices[1:] = unshuffle(percents_shown, q.order - 1)
        progress = np.interp(np.arange(T + 1), q.indices, at_indices / 100.0).astype(np.float32)
        rewards = np.diff(progress).astype(np.float32)
        meta = {
            "progress_at": at_indices / 100.0,  # chronological predictions at frame_indices
            "frame_indices": q.indices,
            "voc": voc(at_indices[1:]) if len(at_indices) > 2 else 0.0,
            "queries": q.attempts,
            "images_per_query": len(q.indices) + sum(len(c[1]) for c in self._context),
            "cached": reply.cached,
            "errors": q.errors or [],
        }
        return EpisodeLabels(rewards, progress=progress, meta=meta)

    # -- the RewardModel interface -----------------------------------------------------
    def label_episode(self, frames: np.ndarray, instruction: str) -> EpisodeLabels:
        return self.label_episodes([(frames, instruction)])[0]

    def label_episodes(self, episodes: Sequence[tuple[np.ndarray, str]]) -> list[EpisodeLabels]:
        """Label several episodes; every round of queries goes to the backend as one batch."""
        queries = []
        for frames, instruction in episodes:
            check_frames(frames)
            if len(frames) < 2:
                raise ValueError(f"an episode needs at least 2 frames (one transition), got {len(frames)}")
            if not isinstance(instruction, str) or not instruction.strip():
                raise ValueError("GVL needs the task instruction: pass a non-empty instruction string")
            indices = subsample(len(frames) - 1, self.num_frames)
            seed = int(hash_image(frames[indices])[:8], 16)
            queries.append(_Query(frames, instruction, indices, seed, errors=[]))
        results: list[EpisodeLabels | None] = [None] * len(queries)
        pending = list(range(len(queries)))
        while pending:
            requests = [self._request(queries[i]) for i in pending]
            replies = self.backend.generate(requests)
            still = []
            for i, reply in zip(pending, replies):
                q = queries[i]
                q.attempts += 1
                try:
                    if not reply.ok:
                        raise ParseError(f"backend error: {reply.error}")
                    percents = parse_reply(reply.text, len(q.indices) - 1)
                except ParseError as e:
                    q.errors.append(str(e))
                    if q.attempts > self.max_retries:
                        results[i] = EpisodeLabels.failed(
                            len(q.frames) - 1, f"GVL query failed {q.attempts}x; last: {e}",
                            queries=q.attempts, errors=q.errors)
                    else:
                        still.append(i)
                    continue
                results[i] = self._labels(q, percents, reply)
            pending = still
        return results  # type: ignore[return-value]
