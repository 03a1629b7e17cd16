"""The VLM client interface every reward module talks to: images plus text in, text out.

A request is an ordered list of parts (text and ``(H, W, 3)`` uint8 images interleaved
as the prompt shows them); a reply is the generated text, with token log-probabilities
where the backend offers them. :func:`rewards.backends.factory.make_backend` builds one
by kind (local transformers, OpenAI-compatible endpoint, scripted oracle), optionally
behind the disk cache.

A request that fails on its own (an endpoint error after all retries, a timeout) comes
back as a reply with ``error`` set, so one bad query never discards the rest of a batch;
a misconfiguration that fails every request (key rejected, endpoint down, model not
found) raises :class:`VLMError` with a one-line message naming the setting to fix.
"""

from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np


@dataclass
class VLMRequest:
    """One prompt: text and images interleaved in order, plus generation settings."""

    parts: list[str | np.ndarray]  # interleaved text and (H, W, 3) uint8 images, in order
    system: str | None = None  # system message; None: none sent
    max_tokens: int = 256  # upper bound on generated tokens
    temperature: float = 0.0  # 0: greedy decoding

    def __post_init__(self) -> None:
        for i, part in enumerate(self.parts):
            if isinstance(part, str):
                continue
            if not isinstance(part, np.ndarray) or part.ndim != 3 or part.shape[-1] != 3 or part.dtype != np.uint8:
                shape = getattr(part, "shape", type(part).__name__)
                raise ValueError(f"VLMRequest.parts[{i}] must be str or an (H, W, 3) uint8 image, got {shape}")

    @property
    def images(self) -> list[np.ndarray]:
        return [p for p in self.parts if isinstance(p, np.ndarray)]

    @property
    def text(self) -> str:
        """All text parts joined (images left out): what the prompt says."""
        return "".join(p for p in self.parts if isinstance(p, str))


@dataclass
class VLMReply:
    """The generated text of one request."""

    text: str
    logprobs: list[tuple[str, float]] | None = None  # (token, log-prob) where the backend offers them
    cached: bool = False  # served from the disk cache
    error: str | None = None  # set when this request failed; text is then empty
    meta: dict[str, Any] = field(default_factory=dict)  # backend extras (latency, usage)

    @property
    def ok(self) -> bool:
        return self.error is None


class VLMError(RuntimeError):
    """A backend misconfiguration; the one-line message names the setting to fix."""


class VLMBackend(abc.ABC):
    """Batched image+text -> text generation."""

    model_id: str  # names the model in cache keys and logs

    @abc.abstractmethod
    def generate(self, requests: Sequence[VLMRequest]) -> list[VLMReply]:
        """One reply per request, in order."""

    def iter_generate(self, requests: Sequence[VLMRequest]) -> Iterator[tuple[int, VLMReply]]:
        """``(index, reply)`` pairs as replies complete (any order); backends that answer
        concurrently override it so the disk cache stores each reply the moment it arrives."""
        yield from enumerate(self.generate(requests))

    def _gather(self, requests: Sequence[VLMRequest]) -> list[VLMReply]:
        """``generate`` for backends that implement ``iter_generate``: replies back in order."""
        replies: list[VLMReply | None] = [None] * len(requests)
        for i, reply in self.iter_generate(requests):
            replies[i] = reply
        return replies  # type: ignore[return-value]

    def close(self) -> None:
        """Release sockets / threads / GPU memory; the default holds nothing."""


def hash_image(image: np.ndarray) -> str:
    """Content address of an image: sha256 over its shape, dtype and bytes."""
    h = hashlib.sha256()
    h.update(f"{image.shape}|{image.dtype}|".encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()

