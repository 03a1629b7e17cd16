"""``make_backend(kind, **cfg)``: a VLM backend by kind, optionally behind the disk cache.

- ``"hf"``: a local transformers image-text-to-text model (:mod:`rewards.backends.hf`);
- ``"openai"``: an OpenAI-compatible chat-completions endpoint (:mod:`rewards.backends.openai`);
- ``"scripted"``: a deterministic stand-in that answers from ground truth
  (:mod:`rewards.backends.scripted`), for tests and offline oracles.

Given ``cache_dir``, the backend is wrapped in the content-addressed disk cache
(:class:`rewards.backends.cache.CachedBackend`), which only sends cache misses. The
interface the backends implement lives in :mod:`rewards.backends.base`.
"""

from __future__ import annotations

import importlib
from typing import Any

from rewards.backends.base import VLMBackend

_KINDS = {
    "hf": "rewards.backends.hf:HFBackend",
    "openai": "rewards.backends.openai:OpenAIBackend",
    "scripted": "rewards.backends.scripted:ScriptedBackend",
}


def make_backend(kind: str, cache_dir: str | None = None, **cfg: Any) -> VLMBackend:
    """Build a backend by kind; with ``cache_dir`` it is wrapped in the disk cache."""
    if kind not in _KINDS:
        raise ValueError(f"unknown VLM backend kind {kind!r}; set backend.kind to one of {sorted(_KINDS)}")
    module, name = _KINDS[kind].split(":")
    backend = getattr(importlib.import_module(module), name)(**cfg)
    if cache_dir:
        from rewards.backends.cache import CachedBackend

        backend = CachedBackend(backend, cache_dir)
    return backend
