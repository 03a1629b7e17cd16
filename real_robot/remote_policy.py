"""Remote policy inference: a policy server on the GPU box, a non-blocking client on the robot.

    python -m real_robot.remote_policy policy=runs/vla_reach bridge.bind=tcp://0.0.0.0:5560   # GPU box
    embodied-actor robot=so100 policy=remote:gpu-box:5560 connect=null                         # robot

:class:`PolicyServer` loads any saved policy (:func:`policies.base.load_base`: a folder of
:func:`policies.save_policy`, an ``embodied-train`` run folder, a LeRobot checkpoint folder
or a hub id) onto the GPU and answers each ``obs`` message (camera frames, state,
instruction) with an action ``chunk`` (the first ``execute`` actions of the policy's
chunk, the policy's own ``n_action_steps`` by default). It binds a ROUTER exactly as the
learner does (:class:`~real_robot.bridge.transport.LearnerSocket`: CURVE, the same
allow-list of actor keys) and speaks the bridge schema (msgpack header + raw numpy
frames, nothing unpickled). When several requests of one robot queued up (the server was
busy or stopped), only the newest is answered.

:class:`RemotePolicy` is what the actor loop calls instead of a local policy, once per
control tick and never blocking: ``next_action(obs, step)`` returns the action for episode
step ``step`` or ``None`` when it has none yet. Prefetch: when the current chunk holds
``prefetch`` actions or fewer for the steps still to come (and no request is in flight),
the current observation is sent; the loop keeps playing the current chunk meanwhile.

Alignment by step index (what we chose): a request carries the episode step ``s`` of its
observation, and the reply's chunk holds the actions for steps ``s, s+1, ...``. When it
arrives at step ``t >= s`` the first ``t - s`` actions (for steps already executed from
the previous chunk while the server computed) are dropped, and the rest REPLACES what
was left of the previous chunk: a newer observation wins. The action for step ``t`` is
always ``chunk[t - s]`` of the newest chunk received, so the executed actions are in
step order and never repeat or skip a step. With a round trip of ``L`` seconds at
``hz`` the queue never runs dry when ``prefetch >= L * hz`` and ``execute >= 2 L * hz``.

Nothing is invented: with no chunk for the current step (the first chunk of an episode
not here yet, or a reply late and the chunk used up) the loop sends nothing and takes no
step; the watchdog (:class:`~real_robot.safety.Watchdog`, not fed) holds the arm after its
deadline. A request unanswered for ``reply_timeout`` seconds is abandoned and sent again
with the current observation; a reply to an abandoned request is dropped (too old to act
on), so a chunk is only ever played from an observation younger than ``reply_timeout``
when it arrived. :meth:`RemotePolicy.reset` at every episode boundary drops the chunk and the request
in flight: queued actions never cross an episode. Under a human takeover the loop keeps
asking (the human's actions are the ones executed), so the chunk in hand when the human
lets go was computed from a recent observation. :meth:`RemotePolicy.connect` checks at
start-up that the server answers within a timeout and that the policy it serves fits the
robot (:meth:`RemotePolicy.check_fits`: action size, state size, cameras and their shapes).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from real_robot.bridge import schema
from real_robot.bridge.transport import ActorSocket

log = logging.getLogger(__name__)
POLICY_ERRORS = (ValueError, RuntimeError, KeyError, TypeError, IndexError)


def parse_remote(spec: str) -> str:
    """``remote:<host>:<port>`` (or ``remote:tcp://<host>:<port>``) -> ``tcp://<host>:<port>``."""
    if not isinstance(spec, str) or not spec.startswith("remote:"):
        raise ValueError(f"policy={spec!r} must be remote:<host>:<port> (a policy server), e.g. remote:gpu-box:5560")
    rest = spec[len("remote:"):]
    rest = rest[len("tcp://"):] if rest.startswith("tcp://") else rest
    host, _, port = rest.rpartition(":")
    if not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536 or "/" in host:
        raise ValueError(f"policy={spec} is not a policy server address: write remote:<host>:<port>, "
                         "e.g. remote:gpu-box:5560 or remote:127.0.0.1:5560")
    return f"tcp://{host}:{int(port)}"


# ------------------------------------------------------------------------------ server


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device} but torch sees no CUDA GPU here; use device=cpu or device=auto")
    return device


def load_served_policy(source: str, device: str = "auto", dataset_keys: Mapping[str, Any] | None = None):
    """The frozen policy ``source`` names, on ``device`` (``auto``: the GPU when there is one)."""
    from policies.base import base_kind, load_base

    kind = base_kind(source)
    kw = {"dataset_keys": dataset_keys} if dataset_keys and kind != "project" else {}
    return load_base(source, device=resolve_device(device), **kw)


class PolicyServer:
    """Answers ``policy_hello`` with ``policy_info`` and ``obs`` with ``chunk`` (module docstring)."""

    def __init__(self, policy: Any, sock, execute: int | None = None, source: str = ""):
        from policies.base import base_io

        self.policy, self.sock, self.source = policy, sock, str(source)
        self.chunk_size = int(getattr(policy, "chunk_size", 1))
        self.execute = int(execute or getattr(policy, "n_action_steps", None) or self.chunk_size)
        if not 1 <= self.execute <= self.chunk_size:
            raise ValueError(f"execute must be in [1, chunk_size={self.chunk_size}], got {self.execute}")
        io = base_io(policy)
        cams = io.get("cameras")
        self.io = {"action_dim": io.get("action_dim"), "state_dim": io.get("state_dim"),
                   "cameras": None if cams is None else {c: None if s is None else [int(v) for v in s]
                                                         for c, s in dict(cams).items()}}
        self.session = uuid.uuid4().hex
        self.episodes: dict[bytes, int] = {}  # peer -> episode of its last request (policy.reset on change)
        self.infer_ms: list[float] = []
        self.stats = {"requests": 0, "answered": 0, "superseded": 0, "errors": 0, "bad_messages": 0, "hellos": 0}
        self.stop_event = threading.Event()

    def info(self) -> list:
        return schema.encode("policy_info", {"session": self.session, "io": self.io, "chunk": self.execute,
                                             "execute": self.execute, "source": self.source})

    def warmup(self) -> None:
        """One inference on a blank observation (CUDA kernels, caches) before the first robot asks."""
        io, cams = self.io, self.io.get("cameras") or {}
        if any(s is None for s in cams.values()):
            return
        obs: dict[str, Any] = {"instruction": [""]}
        if io.get("state_dim"):
            obs["state"] = np.zeros((1, int(io["state_dim"])), np.float32)
        if cams:
            obs["pixels"] = {c: np.zeros((1, *s), np.uint8) for c, s in cams.items()}
        try:
            self._chunk(obs, True)
        except POLICY_ERRORS as exc:
            log.warning("policy server: warm-up inference failed (%s); serving anyway",
                        (str(exc).splitlines() or [type(exc).__name__])[0])

    def serve(self, max_seconds: float = 0.0, stats_file: str = "") -> None:
        """Until :meth:`stop` (or ``max_seconds``): drain what arrived, answer each robot's newest request."""
        end = time.monotonic() + max_seconds if max_seconds else float("inf")
        last_stats = 0.0
        while not self.stop_event.is_set() and time.monotonic() < end:
            newest: dict[bytes, schema.Message] = {}
            got = self.sock.recv(100)
            while got is not None:
                peer, user, frames = got
                self._receive(peer, user, frames, newest)
                got = self.sock.recv(0)
            for peer, msg in newest.items():
                self.sock.send(peer, self._answer(peer, msg))
            if stats_file and time.monotonic() - last_stats > 1.0:
                last_stats = time.monotonic()
                _write_json(stats_file, self.stats_dict())

    def _receive(self, peer: bytes, user: str | None, frames: list, newest: dict) -> None:
        try:
            msg = schema.decode(frames)
            if msg.type not in ("policy_hello", "obs"):
                raise schema.SchemaError(f"a robot may not send {msg.type!r} messages to a policy server")
        except schema.SchemaError as exc:
            self.stats["bad_messages"] += 1
            log.error("policy server dropped a malformed message from %s: %s", user or peer[:16], exc)
            return
        if msg.type == "policy_hello":  # a robot (re)started: its next request starts an episode
            self.stats["hellos"] += 1
            self.episodes.pop(peer, None)
            log.info("robot %s connected", user or f"{str(msg.fields['actor'])[:64]} (plaintext)")
            self.sock.send(peer, self.info())
            return
        self.stats["requests"] += 1
        if peer in newest:
            self.stats["superseded"] += 1  # an older request of the same robot: its answer would be dropped
        newest[peer] = msg

    def _answer(self, peer: bytes, msg: schema.Message) -> list:
        f = msg.fields
        try:
            obs = self._obs(msg)
            if self.episodes.get(peer) != f["episode"]:
                self.episodes[peer] = f["episode"]
                if hasattr(self.policy, "reset"):
                    self.policy.reset([0])
            t0 = time.perf_counter()
            chunk = self._chunk(obs, bool(f.get("deterministic", True)))
            ms = 1e3 * (time.perf_counter() - t0)
        except POLICY_ERRORS as exc:
            self.stats["errors"] += 1
            error = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            log.error("policy server: request %s failed: %s", f["req"], error)
            return schema.encode("policy_error", {"req": f["req"], "error": error})
        self.infer_ms = (self.infer_ms + [ms])[-2000:]
        self.stats["answered"] += 1
        return schema.encode("chunk", {"req": f["req"], "episode": f["episode"], "step": f["step"], "infer_ms": ms},
                             {"action": chunk})

    def _obs(self, msg: schema.Message) -> dict[str, Any]:
        """An ``obs`` message -> the policy's batch of one (arrays copied out of the frames)."""
        obs: dict[str, Any] = {"instruction": [msg.fields["instr"]]}
        for name, arr in msg.arrays.items():
            if name == "state" and arr.dtype == np.float32 and arr.ndim == 1:
                obs["state"] = np.array(arr)[None]
            elif name.startswith("pixels/") and arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[-1] == 3:
                obs.setdefault("pixels", {})[name[7:]] = np.array(arr)[None]
            else:
                raise ValueError(f"obs array {name!r} {arr.dtype}{arr.shape} is neither a float32 state vector nor "
                                 "an (H, W, 3) uint8 camera frame 'pixels/<camera>'")
        return obs

    def _chunk(self, obs: dict[str, Any], deterministic: bool) -> np.ndarray:
        from policies.chunking import policy_step

        action = np.asarray(policy_step(self.policy, obs, None, deterministic).action, np.float32)
        chunk = action.reshape(self.chunk_size, -1) if self.chunk_size > 1 else action.reshape(1, -1)
        return np.ascontiguousarray(chunk[: self.execute])

    def stop(self, *_: Any) -> None:
        self.stop_event.set()

    def stats_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.stats)
        if self.infer_ms:
            out["infer_ms_p50"] = float(np.percentile(self.infer_ms, 50))
            out["infer_ms_p99"] = float(np.percentile(self.infer_ms, 99))
        return out


# ------------------------------------------------------------------------------ client


class RemotePolicy:
    """The robot's side: a DEALER to a :class:`PolicyServer`, played step-aligned (module docstring)."""

    def __init__(self, address: str, actor_id: str, secret_key: str | None = None, server_key: str | None = None,
                 insecure_loopback: bool = False, prefetch: int = 4, reply_timeout: float = 1.0):
        if prefetch < 0 or reply_timeout <= 0:
            raise ValueError("remote.prefetch must be >= 0 and remote.reply_timeout > 0")
        self.address, self.actor_id = address, actor_id
        self.public_key = str(Path(secret_key).with_suffix(".key")) if secret_key else "this actor's .key file"
        self.sock = ActorSocket(address, actor_id, secret_key, server_key, insecure_loopback)
        self.prefetch, self.reply_timeout = int(prefetch), float(reply_timeout)
        self.io: dict[str, Any] = {}
        self.execute = 0
        self.episode = 0
        self._chunk: np.ndarray | None = None  # the newest chunk: actions for steps _chunk_step, _chunk_step + 1, ...
        self._chunk_step = 0
        self._inflight: tuple[int, float] | None = None  # (request id, send time)
        self._next_req = 0
        self._retry_at = 0.0
        self._dry = False
        self.rtt_ms: list[float] = []
        self.counts = {"requests": 0, "chunks": 0, "dropped_actions": 0, "late_replies": 0, "timeouts": 0,
                       "errors": 0, "bad_messages": 0, "first_chunk_waits": 0, "starved": 0,
                       "acted_while_waiting": 0}  # actions played while a request was being computed

    # -- start-up ------------------------------------------------------------------------
    def connect(self, timeout: float) -> dict[str, Any]:
        """Ask the server what it serves; one-line errors for a refused key or no answer in ``timeout`` s."""
        end, last_hello = time.monotonic() + timeout, 0.0
        while True:
            now = time.monotonic()
            if self.sock.auth_failed:
                raise PermissionError(f"the policy server at {self.address} rejected this actor's CURVE key "
                                      f"(fingerprint '{self.sock.fingerprint}'): add {self.public_key} to its "
                                      "bridge.allow_dir")
            if now > end:
                raise ValueError(f"the policy server at {self.address} did not answer within {timeout:g} s: start it "
                                 "(python -m real_robot.remote_policy policy=...), check the address and that "
                                 "remote.server_key is its public key")
            if now - last_hello > 1.0:
                self.sock.send(schema.encode("policy_hello", {"actor": self.actor_id, "session": uuid.uuid4().hex}))
                last_hello = now
            frames = self.sock.recv(50)
            if frames is None:
                continue
            try:
                msg = schema.decode(frames)
            except schema.SchemaError as exc:
                self.counts["bad_messages"] += 1
                log.error("remote policy: dropped a malformed message from the server: %s", exc)
                continue
            if msg.type == "policy_info":
                self.io, self.execute = _checked_io(msg.fields["io"], self.address), int(msg.fields["chunk"])
                log.info("remote policy at %s: %s, chunks of %d actions", self.address,
                         msg.fields.get("source", "?"), self.execute)
                return self.io

    def check_fits(self, obs_space, action_space) -> None:
        """One-line error when the served policy does not read / emit what this robot observes / takes."""
        io, where, spaces = self.io, f"the policy at remote:{self.address[6:]}", obs_space.spaces
        if io["action_dim"] is None:  # the server's policy does not say: replies are checked against the robot
            io["action_dim"] = int(action_space.shape[0])
        if io["action_dim"] != int(action_space.shape[0]):
            raise ValueError(f"{where} emits {io['action_dim']}-dim actions, this robot takes "
                             f"{int(action_space.shape[0])} (robot.motors)")
        robot_state = int(spaces["state"].shape[0]) if "state" in spaces else 0
        if io.get("state_dim") and io["state_dim"] != robot_state:
            raise ValueError(f"{where} reads a {io['state_dim']}-dim state, this robot observes {robot_state}")
        cams = {c: tuple(s.shape) for c, s in spaces["pixels"].spaces.items()} if "pixels" in spaces else {}
        for cam, shape in (io.get("cameras") or {}).items():
            if cam not in cams:
                raise ValueError(f"{where} reads camera {cam!r}, this robot has {sorted(cams) or 'no cameras'} "
                                 "(robot.cameras, or robot.pixels=true on the sim robot)")
            if shape is not None and tuple(shape) != cams[cam]:
                raise ValueError(f"{where} reads {cam!r} frames of shape {tuple(shape)}, this robot sends "
                                 f"{cams[cam]}: set robot.image_size={shape[0]}")

    # -- the control loop's calls ----------------------------------------------------------
    def reset(self) -> None:
        """A new episode: no action of the last one is played, its request's reply is dropped."""
        self.episode += 1
        self._chunk, self._inflight, self._dry = None, None, False

    def remaining(self, step: int) -> int:
        """Actions the current chunk still holds for steps ``step, step + 1, ...``."""
        return 0 if self._chunk is None else max(0, len(self._chunk) - (step - self._chunk_step))

    def next_action(self, obs: Mapping[str, Any], step: int, deterministic: bool = False) -> np.ndarray | None:
        """The action for episode step ``step`` (``obs`` is observed before it), or None; never blocks."""
        now = time.monotonic()
        self._receive(step, now)
        if self._inflight is not None and now - self._inflight[1] > self.reply_timeout:
            self.counts["timeouts"] += 1
            log.warning("remote policy: no reply from %s within %.2f s; asking again with the current observation",
                        self.address, self.reply_timeout)
            self._inflight = None
        left = self.remaining(step)
        if left <= self.prefetch and self._inflight is None and now >= self._retry_at:
            self._request(obs, step, deterministic, now)
        if left == 0:
            self.counts["first_chunk_waits" if self._chunk is None else "starved"] += 1
            if self._chunk is not None and not self._dry:
                log.warning("remote policy: no action for step %d (the next chunk is late); sending nothing, the "
                            "watchdog holds the robot", step)
            self._dry = self._chunk is not None
            return None
        self._dry = False
        self.counts["acted_while_waiting"] += self._inflight is not None
        return np.array(self._chunk[step - self._chunk_step], np.float32)

    def _request(self, obs: Mapping[str, Any], step: int, deterministic: bool, now: float) -> None:
        arrays: dict[str, np.ndarray] = {}
        if "state" in obs:
            arrays["state"] = np.asarray(obs["state"], np.float32)
        for cam, frame in (obs.get("pixels") or {}).items():
            arrays[f"pixels/{cam}"] = np.asarray(frame, np.uint8)
        req = self._next_req
        self._next_req += 1
        fields = {"req": req, "episode": self.episode, "step": int(step), "instr": str(obs.get("instruction", "")),
                  "deterministic": bool(deterministic)}
        if self.sock.send(schema.encode("obs", fields, arrays)):
            self._inflight = (req, now)
            self.counts["requests"] += 1

    def _receive(self, step: int, now: float) -> None:
        frames = self.sock.recv(0)
        while frames is not None:
            try:
                self._handle(schema.decode(frames), step, now)
            except schema.SchemaError as exc:
                self.counts["bad_messages"] += 1
                log.error("remote policy: dropped a malformed message from the server: %s", exc)
            frames = self.sock.recv(0)

    def _handle(self, msg: schema.Message, step: int, now: float) -> None:
        if msg.type not in ("chunk", "policy_error"):
            return  # a repeated policy_info
        f = msg.fields
        if self._inflight is None or f["req"] != self._inflight[0]:
            self.counts["late_replies"] += 1  # abandoned (timed out) or of an earlier episode
            return
        if msg.type == "policy_error":
            self.counts["errors"] += 1
            log.error("remote policy: the server could not act on step %d: %s", step, f["error"])
            self._inflight, self._retry_at = None, now + self.reply_timeout
            return
        chunk = msg.arrays.get("action")
        if (chunk is None or chunk.dtype != np.float32 or chunk.ndim != 2 or not len(chunk)
                or self.io.get("action_dim") not in (None, chunk.shape[1]) or f["step"] > step):
            raise schema.SchemaError(f"chunk reply must hold a float32 (K, {self.io.get('action_dim')}) 'action' "
                                     "array for a step already observed")
        self.rtt_ms = (self.rtt_ms + [1e3 * (now - self._inflight[1])])[-2000:]
        self._inflight = None
        self.counts["chunks"] += 1
        self.counts["dropped_actions"] += min(len(chunk), step - f["step"])  # steps played while it was computed
        self._chunk, self._chunk_step = chunk, int(f["step"])

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {f"remote_{k}": v for k, v in self.counts.items()}
        if self.rtt_ms:
            out["remote_rtt_ms_p50"] = float(np.percentile(self.rtt_ms, 50))
            out["remote_rtt_ms_p99"] = float(np.percentile(self.rtt_ms, 99))
        return out

    def close(self) -> None:
        self.sock.close()


def _checked_io(io: Any, address: str) -> dict[str, Any]:
    """The server's ``policy_info`` io, checked: ``action_dim`` and ``state_dim`` int or None,
    ``cameras`` {name: [H, W, 3] or None} or None."""
    bad = ValueError(f"the policy server at {address} sent a malformed policy description")
    if not isinstance(io, dict) or io.get("action_dim") is not None and not (
            isinstance(io["action_dim"], int) and io["action_dim"] >= 1):
        raise bad
    state, cams = io.get("state_dim"), io.get("cameras") or {}
    if state is not None and not isinstance(state, int) or not isinstance(cams, dict):
        raise bad
    for name, shape in cams.items():
        if not isinstance(name, str) or shape is not None and not (
                isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) for v in shape)):
            raise bad
    return {"action_dim": io["action_dim"], "state_dim": state, "cameras": cams}


def _write_json(path: str, data: dict) -> None:
    import json
    import os

    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, p)


if __name__ == "__main__":  # python -m real_robot.remote_policy policy=<folder> (configs/policy_server.yaml)
    from real_robot.cli import policy_server_main

    policy_server_main()
