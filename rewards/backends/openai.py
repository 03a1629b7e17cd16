"""OpenAI-compatible chat-completions backend (vLLM, SGLang, LMDeploy, hosted APIs).

Each request becomes one ``POST {base_url}/chat/completions`` with the images inline as
base64 ``data:`` URLs (PNG by default: lossless, so the server sees the exact pixels;
JPEG is smaller). Requests run on a thread pool of ``concurrency`` workers.

Errors:

- 429, 5xx, timeouts and dropped connections are retried ``max_retries`` times with
  exponential backoff and jitter (``backoff * 2**attempt`` seconds, capped at
  ``max_backoff``, times a random factor in [0.5, 1]; a ``Retry-After`` header is honoured
  up to the cap); still failing, the request comes back as a reply with ``error`` set;
- 401 / 403 (key rejected), 404 (unknown model or path) and a refused connection
  (endpoint down) fail every request alike, so they raise :class:`VLMError` naming the
  setting to fix; other 4xx answers are that request's error.

The API key is read from the environment variable ``api_key_env`` (default
``OPENAI_API_KEY``); it is sent only in the ``Authorization`` header, never logged and
never put in an error message. A local server usually needs none; then no header is sent.
Standard library only (``urllib``), so no extra dependency.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Iterator, Sequence

import numpy as np

from rewards.backends.base import VLMBackend, VLMError, VLMReply, VLMRequest

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def encode_image(image: np.ndarray, fmt: str = "png", quality: int = 90) -> str:
    """(H, W, 3) uint8 -> ``data:image/...;base64,...`` URL."""
    from PIL import Image

    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    else:
        Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return f"data:image/{fmt};base64,{base64.b64encode(buf.getvalue()).decode()}"


def to_messages(request: VLMRequest, fmt: str = "png") -> list[dict[str, Any]]:
    """The chat-completions ``messages`` of a request: its parts in order in one user turn."""
    content = []
    for part in request.parts:
        if isinstance(part, str):
            if part:
                content.append({"type": "text", "text": part})
        else:
            content.append({"type": "image_url", "image_url": {"url": encode_image(part, fmt)}})
    messages = [{"role": "system", "content": request.system}] if request.system else []
    return messages + [{"role": "user", "content": content}]


class _Retry(Exception):
    """A transient failure worth another try."""

    def __init__(self, message: str, wait: float | None = None):
        super().__init__(message)
        self.wait = wait


class _Permanent(Exception):
    """A failure of this request alone that another try will not fix (e.g. HTTP 400)."""


class OpenAIBackend(VLMBackend):
    """Chat-completions client with a concurrency limit, timeouts and retries."""

    def __init__(
        self,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        image_format: str = "png",
        logprobs: bool = False,
        extra_body: dict[str, Any] | None = None,
    ):
        """
        model: the model name the endpoint serves (e.g. ``Qwen/Qwen2.5-VL-7B-Instruct`` on vLLM).
        base_url: the endpoint root, ending in ``/v1``.
        api_key_env: environment variable holding the API key (unset: no key sent).
        concurrency: requests in flight at once.
        timeout: seconds to wait for one response before retrying it.
        max_retries: further tries of a request after a 429 / 5xx / timeout.
        backoff: first retry waits about this many seconds, doubling each time.
        max_backoff: cap of one wait.
        image_format: ``"png"`` (lossless) or ``"jpeg"`` (smaller uploads).
        logprobs: ask for token log-probs (returned in ``VLMReply.logprobs``).
        extra_body: further JSON fields merged into every request (e.g. ``{"top_k": 1}``).
        """
        if not model:
            raise ValueError("OpenAIBackend needs backend.model: the model name the endpoint serves")
        if image_format not in ("png", "jpeg"):
            raise ValueError(f"backend.image_format must be 'png' or 'jpeg', got {image_format!r}")
        if concurrency < 1:
            raise ValueError(f"backend.concurrency must be >= 1, got {concurrency}")
        self.model_id = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.concurrency, self.timeout, self.max_retries = concurrency, timeout, max_retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self.image_format, self.logprobs, self.extra_body = image_format, logprobs, dict(extra_body or {})
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="vlm-http")

    def _key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None

    def _clean(self, text: str) -> str:
        key = self._key()
        return text.replace(key, "***") if key else text

    def _post_once(self, body: bytes) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        key = self._key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            detail = self._clean(e.read()[:300].decode(errors="replace"))
            if e.code in (401, 403):
                raise VLMError(f"the endpoint rejected the API key (HTTP {e.code}); set a valid key in "
                               f"${self.api_key_env} (backend.api_key_env)") from None
            if e.code == 404:
                raise VLMError(f"HTTP 404 from {self.url}: check backend.base_url and backend.model "
                               f"({self.model_id!r}): {detail}") from None
            if e.code in _RETRY_STATUS:
                retry_after = e.headers.get("Retry-After") if e.headers else None
                wait = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None
                raise _Retry(f"HTTP {e.code}: {detail}", wait) from None
            raise _Permanent(f"HTTP {e.code}: {detail}") from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, ConnectionRefusedError):
                raise VLMError(f"cannot connect to {self.base_url} (connection refused): is the server "
                               f"running? check backend.base_url") from None
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise _Retry(f"timed out after {self.timeout}s") from None
            if isinstance(reason, socket.gaierror):
                raise VLMError(f"cannot resolve the host of {self.base_url}: check backend.base_url") from None
            raise _Retry(f"connection error: {reason}") from None
        except (TimeoutError, socket.timeout):
            raise _Retry(f"timed out after {self.timeout}s") from None
        except (ConnectionError, json.JSONDecodeError) as e:
            raise _Retry(f"{type(e).__name__}: {e}") from None

    def _one(self, request: VLMRequest) -> VLMReply:
        payload: dict[str, Any] = {
            "model": self.model_id,
            "messages": to_messages(request, self.image_format),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            **self.extra_body,
        }
        if self.logprobs:
            payload["logprobs"] = True
        body = json.dumps(payload).encode()
        start = time.monotonic()
        for attempt in range(self.max_retries + 1):
            try:
                data = self._post_once(body)
                return self._reply(data, attempts=attempt + 1, seconds=time.monotonic() - start)
            except _Permanent as e:
                return VLMReply("", error=str(e), meta={"attempts": attempt + 1})
            except _Retry as e:
                if attempt == self.max_retries:
                    return VLMReply("", error=f"gave up after {attempt + 1} tries: {e}", meta={"attempts": attempt + 1})
                wait = min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)
                time.sleep(min(self.max_backoff, e.wait) if e.wait is not None else wait)
        raise AssertionError("unreachable")

    def _reply(self, data: dict[str, Any], **meta: Any) -> VLMReply:
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            return VLMReply("", error=f"response without choices[0].message.content: {str(data)[:200]}", meta=meta)
        logprobs = None
        content = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
        if content:
            logprobs = [(t["token"], float(t["logprob"])) for t in content]
        return VLMReply(text, logprobs, meta={**meta, "usage": data.get("usage")})

    def iter_generate(self, requests: Sequence[VLMRequest]) -> Iterator[tuple[int, VLMReply]]:
        futures = {self._pool.submit(self._one, r): i for i, r in enumerate(requests)}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:
            for future in futures:
                future.cancel()

    def generate(self, requests: Sequence[VLMRequest]) -> list[VLMReply]:
        return self._gather(requests)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
