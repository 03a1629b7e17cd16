"""A minimal OpenAI-compatible chat-completions server on 127.0.0.1.

It answers ``POST /v1/chat/completions`` through any :class:`VLMBackend` (typically the
scripted oracle): images arrive as base64 ``data:`` URLs and are decoded back to arrays,
so the oracle recognises them exactly (PNG is lossless). Used by the tests and the
labeling benchmark to run the real HTTP client against a real server, and handy to try
a labeling pipeline offline.

Fault injection for tests: ``faults`` is a queue consumed one request at a time, each
entry one of ``"429"``, ``"500"``, ``"401"``, ``"400"``, ``"timeout"`` (hold the answer
for ``hang`` seconds) or ``"ok"``; ``latency`` delays every answer.

    with LocalChatServer(ScriptedBackend(progress), latency=0.2) as server:
        backend = OpenAIBackend(model="oracle", base_url=server.base_url)
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from rewards.backends.base import VLMBackend, VLMRequest


def decode_image(url: str) -> np.ndarray:
    """``data:image/...;base64,...`` -> (H, W, 3) uint8."""
    from PIL import Image

    if not url.startswith("data:image/") or ";base64," not in url:
        raise ValueError("image_url must be a base64 data: URL")
    raw = base64.b64decode(url.split(";base64,", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


def from_messages(body: dict[str, Any]) -> VLMRequest:
    """A chat-completions request body -> :class:`VLMRequest` (the inverse of ``to_messages``)."""
    system, parts = None, []
    for message in body["messages"]:
        content = message["content"]
        if message["role"] == "system":
            system = content if isinstance(content, str) else "".join(c["text"] for c in content)
            continue
        for item in [{"type": "text", "text": content}] if isinstance(content, str) else content:
            parts.append(item["text"] if item["type"] == "text" else decode_image(item["image_url"]["url"]))
    return VLMRequest(parts, system=system, max_tokens=int(body.get("max_tokens") or 256),
                      temperature=float(body.get("temperature") or 0.0))


class LocalChatServer:
    """Serves a backend over the chat-completions protocol on a free local port."""

    def __init__(self, backend: VLMBackend, latency: float = 0.0, faults: list[str] | None = None,
                 hang: float = 5.0, api_key: str | None = None):
        """
        backend: answers the requests (e.g. :class:`~rewards.backends.scripted.ScriptedBackend`).
        latency: seconds added to every answer (a stand-in for model inference time).
        faults: per-request failures to inject, consumed in arrival order.
        hang: how long a ``"timeout"`` fault holds the connection.
        api_key: when set, requests without ``Authorization: Bearer <api_key>`` get 401.
        """
        self.backend, self.latency, self.hang, self.api_key = backend, latency, hang, api_key
        self.faults = list(faults or [])
        self.lock = threading.Lock()
        self.received: list[dict[str, Any]] = []  # request bodies, in arrival order
        self.headers: list[dict[str, str]] = []
        self.active = self.max_active = 0  # requests being answered now / at most at once
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> "LocalChatServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self._done()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with server.lock:
                    server.received.append(body)
                    server.headers.append(dict(self.headers))
                    fault = server.faults.pop(0) if server.faults else "ok"
                    server.active += 1
                    server.max_active = max(server.max_active, server.active)
                self._counted = True
                try:
                    self._answer(body, fault)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout) before the answer
                finally:
                    self._done()

            def _done(self):
                # a request stops being "active" once its answer starts going out: the client
                # may read it and send its next request before this handler thread returns
                if getattr(self, "_counted", False):
                    self._counted = False
                    with server.lock:
                        server.active -= 1

            def _answer(self, body, fault):
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                auth = self.headers.get("Authorization", "")
                if fault == "401" or (server.api_key and auth != f"Bearer {server.api_key}"):
                    return self._send(401, {"error": {"message": "invalid api key"}})
                if fault == "429":
                    return self._send(429, {"error": {"message": "rate limited"}}, {"Retry-After": "0"})
                if fault == "500":
                    return self._send(500, {"error": {"message": "internal error"}})
                if fault == "400":
                    return self._send(400, {"error": {"message": "too many images"}})
                if fault == "timeout":
                    time.sleep(server.hang)
                time.sleep(server.latency)
                reply = server.backend.generate([from_messages(body)])[0]
                choice: dict[str, Any] = {"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": reply.text}}
                if body.get("logprobs"):
                    choice["logprobs"] = {"content": [{"token": reply.text, "logprob": 0.0}]}
                self._send(200, {"id": "local", "object": "chat.completion", "model": body.get("model"),
                                 "choices": [choice], "usage": {"prompt_tokens": 0, "completion_tokens": 0}})

        return Handler
