"""A deterministic stand-in VLM that answers from ground truth, for tests and offline oracles.

It is given the true task progress (in [0, 1]) of every frame it may be shown, keyed by
image content (:func:`hash_image`), and writes the text a perfect model would write, so
the reward modules' real prompt builders and parsers run unchanged:

- GVL (:mod:`rewards.gvl`): ``Frame k: v%`` for every query frame (the images after the
  query instruction), ``v`` the rounded true percentage;
- VLAC pair (:mod:`rewards.vlac`): the delta ``c`` that the value accumulation turns into
  the second frame's true progress: ``c = 100 (p2 - p1) / (100 - p1)``;
- VLAC done: ``1`` if the frame's progress reaches ``done_at``, else ``0``;
- a preference question (two images, any other text): a short comparison
  ``Image 1 shows the task 40% done. Image 2 shows the task 70% done. ...``; the text-only
  follow-up that quotes such a comparison gets ``0`` (first better), ``1`` (second) or
  ``-1`` (equal): the RL-VLM-F label convention.

With ``error_rate`` > 0 a reply is replaced, with that probability, by one of the
failures real models produce (a refusal, a malformed line, an out-of-range value, a
missing answer). The draw is seeded by the request's content, so the same request always
gets the same reply. A frame without ground truth gets a refusal.
"""

from __future__ import annotations

import re
import time
from typing import Mapping, Sequence

import numpy as np

from rewards.backends.base import VLMBackend, VLMReply, VLMRequest, hash_image
from rewards.backends.cache import request_key

_COMPARISON = re.compile(r"Image 1 shows the task (\d+(?:\.\d+)?)% done\. Image 2 shows the task (\d+(?:\.\d+)?)% done\.")
REFUSAL = "I'm sorry, but I can't determine the task progress from these images."


class ScriptedBackend(VLMBackend):
    """Answers GVL / VLAC / preference prompts from a table of true progress per image."""

    def __init__(self, progress: Mapping[str, float] | None = None, error_rate: float = 0.0,
                 done_at: float = 0.95, seed: int = 0, model_id: str = "scripted-oracle", latency: float = 0.0):
        """
        progress: image hash (:func:`hash_image`) -> true progress in [0, 1].
        error_rate: probability that a reply is a realistic failure instead of the answer.
        done_at: progress from which the done question is answered ``1``.
        seed: seeds the error draws (together with each request's content).
        model_id: names the oracle in cache keys.
        latency: seconds slept per request (a stand-in for a real model's inference time, as
            benchmarks/bench_ppo.py's episode-reward cost uses it).
        """
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
        if latency < 0:
            raise ValueError(f"latency must be >= 0 seconds, got {latency}")
        self.latency = float(latency)
        self.progress = dict(progress or {})
        self.error_rate, self.done_at, self.seed, self.model_id = error_rate, done_at, seed, model_id
        self.calls = 0  # requests answered

    def add_episode(self, frames: np.ndarray, progress: Sequence[float]) -> None:
        """Register the true progress of each frame of an episode."""
        if len(frames) != len(progress):
            raise ValueError(f"one progress value per frame: {len(frames)} frames, {len(progress)} values")
        for frame, p in zip(frames, progress):
            self.progress[hash_image(frame)] = float(p)

    def _p(self, image: np.ndarray) -> float | None:
        return self.progress.get(hash_image(image))

    def generate(self, requests: Sequence[VLMRequest]) -> list[VLMReply]:
        replies = []
        for request in requests:
            self.calls += 1
            if self.latency:
                time.sleep(self.latency)
            rng = np.random.default_rng([self.seed, int(request_key(self.model_id, request)[:12], 16)])
            if rng.random() < self.error_rate:
                replies.append(VLMReply(self._failure(request, rng)))
            else:
                replies.append(VLMReply(self._answer(request)))
        return replies

    def _answer(self, request: VLMRequest) -> str:
        from rewards import gvl, vlac

        text, images = request.text, request.images
        if gvl.QUERY_MARKER in text:
            start = next(i for i, p in enumerate(request.parts) if isinstance(p, str) and gvl.QUERY_MARKER in p)
            shown = [p for p in request.parts[start:] if isinstance(p, np.ndarray)]
            values = [self._p(f) for f in shown]
            if any(v is None for v in values):
                return REFUSAL
            return "\n".join(f"Frame {k}: {round(100 * v)}%" for k, v in enumerate(values, start=1))
        if vlac.PAIR_MARKER in text:
            p1, p2 = self._p(images[-2]), self._p(images[-1])
            if p1 is None or p2 is None:
                return REFUSAL
            p1, p2 = 100 * p1, 100 * p2
            delta = 100 * (p2 - p1) / max(100 - p1, 1.0)
            return f"{np.clip(delta, -100, 100):.1f}"
        if vlac.DONE_MARKER in text:
            p = self._p(images[-1])
            return REFUSAL if p is None else ("1" if p >= self.done_at else "0")
        if len(images) == 2:
            p1, p2 = self._p(images[0]), self._p(images[1])
            if p1 is None or p2 is None:
                return REFUSAL
            verdict = ("Image 1 is closer to the goal." if p1 > p2 else "Image 2 is closer to the goal."
                       if p2 > p1 else "Both images are equally close to the goal.")
            return f"Image 1 shows the task {100 * p1:.0f}% done. Image 2 shows the task {100 * p2:.0f}% done. {verdict}"
        match = _COMPARISON.search(text)
        if not images and match:
            p1, p2 = float(match.group(1)), float(match.group(2))
            return "0" if p1 > p2 else "1" if p2 > p1 else "-1"
        return REFUSAL

    def _failure(self, request: VLMRequest, rng: np.random.Generator) -> str:
        kind = rng.integers(4)
        if kind == 0:
            return REFUSAL
        answer = self._answer(request)
        lines = answer.splitlines()
        if kind == 1:  # a malformed line
            return "\n".join(["Frame one: about half"] + lines[1:]) if len(lines) > 1 else "about half"
        if kind == 2:  # out of range
            return "\n".join(["Frame 1: 140%"] + lines[1:]) if len(lines) > 1 else "250"
        return "\n".join(lines[:-1]) if len(lines) > 1 else ""  # a missing answer
