"""Content-addressed disk cache for VLM replies.

The key is the sha256 of the model id, the system message, every prompt part in order
(text verbatim, images by shape + bytes) and the generation settings, so the same
question to the same model is asked once. Each entry is one small JSON file
``<cache_dir>/<key[:2]>/<key>.json`` written to a temporary name and renamed into place,
so a crash never leaves a half-written entry and every finished query survives it.
Failed replies are not cached: they are asked again next time.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Sequence

from rewards.backends.base import VLMBackend, VLMReply, VLMRequest, hash_image


def request_key(model_id: str, request: VLMRequest) -> str:
    """sha256 hex digest that addresses ``request`` sent to ``model_id``."""
    h = hashlib.sha256()
    settings = {"model": model_id, "system": request.system, "max_tokens": request.max_tokens,
                "temperature": request.temperature}
    h.update(json.dumps(settings, sort_keys=True).encode())
    for part in request.parts:
        if isinstance(part, str):
            h.update(b"\x00text\x00" + part.encode())
        else:
            h.update(b"\x00image\x00" + hash_image(part).encode())
    return h.hexdigest()


class CachedBackend(VLMBackend):
    """Wraps a backend: hits come from disk, only misses are sent, successes are stored."""

    def __init__(self, backend: VLMBackend, cache_dir: str | os.PathLike):
        self.backend = backend
        self.model_id = backend.model_id
        self.root = Path(cache_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = 0  # replies served from disk since construction
        self.misses = 0  # replies asked of the wrapped backend

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def _read(self, key: str) -> VLMReply | None:
        path = self._path(key)
        try:
            entry = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # a damaged entry is asked again and overwritten
        logprobs = entry.get("logprobs")
        return VLMReply(entry["text"], [tuple(x) for x in logprobs] if logprobs is not None else None, cached=True)

    def _write(self, key: str, reply: VLMReply) -> None:
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "w") as f:
            json.dump({"model": self.model_id, "text": reply.text, "logprobs": reply.logprobs}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def generate(self, requests: Sequence[VLMRequest]) -> list[VLMReply]:
        keys = [request_key(self.model_id, r) for r in requests]
        replies: list[VLMReply | None] = [self._read(k) for k in keys]
        first: dict[str, int] = {}  # key -> first missing position (duplicates are asked once)
        for i, reply in enumerate(replies):
            if reply is None:
                first.setdefault(keys[i], i)
        send = list(first.values())
        self.hits += len(requests) - sum(r is None for r in replies)
        self.misses += len(send)
        if send:  # each reply is stored as it arrives: a crash loses only those in flight
            for j, reply in self.backend.iter_generate([requests[i] for i in send]):
                if reply.ok:
                    self._write(keys[send[j]], reply)
                replies[send[j]] = reply
        for i, reply in enumerate(replies):
            if reply is None:
                replies[i] = replies[first[keys[i]]]
        return replies  # type: ignore[return-value]

    def close(self) -> None:
        self.backend.close()
