"""The actor's side of the bridge: a thread that owns the socket and the spool.

The control loop never waits on the network. It hands finished transition batches to
:meth:`ActorLink.submit` and reads :attr:`ActorLink.policy` (swapped in whole when newer
weights arrive: newest version wins, older messages are dropped).

Delivery: every batch gets the next sequence number, is appended to the spool (fsync
per the spool policy) and only then sent. It stays "pending" until the learner acks
it; pending batches are resent every ``resend_after`` seconds while the learner is
heard, and all at once when a learner (re)appears with a new session. A spool segment
is deleted once every batch in it is acked. On restart the spool is read back and
everything in it is pending again (the learner drops duplicates by sequence number).
Sequence numbers have no gaps: the next one is max(spooled) + 1, or the persisted
floor written before the last acked segment was deleted.

A learner that refuses this actor's CURVE key is the one thing that stops an actor:
:meth:`ActorLink.wait_for_learner` raises at start-up and :attr:`ActorLink.rejected`
tells the control loop later on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from real_robot.bridge import schema
from real_robot.bridge.memory import keep_freed_buffers
from real_robot.bridge.spool import Counters, Spool
from real_robot.bridge.transport import ActorSocket

log = logging.getLogger(__name__)


class ActorLink:
    def __init__(self, address: str, actor_id: str, spool_dir: str, *, secret_key: str | None = None,
                 server_key: str | None = None, insecure_loopback: bool = False, fsync: str = "batch",
                 heartbeat: float = 0.5, learner_timeout: float = 3.0, resend_after: float = 2.0,
                 window: int = 64, segment_bytes: int = 16 << 20,
                 build_policy: Callable[[dict, dict], Any] | None = None):
        keep_freed_buffers()  # per-message camera batches from the heap, not fresh mmap pages
        self.actor_id = actor_id
        self.public_key = str(Path(secret_key).with_suffix(".key")) if secret_key else "this actor's .key file"
        self.sock = ActorSocket(address, actor_id, secret_key, server_key, insecure_loopback)
        self.spool = Spool(spool_dir, fsync=fsync, segment_bytes=segment_bytes)
        self.counters = Counters(f"{spool_dir}/counters.json")
        self.heartbeat, self.learner_timeout = heartbeat, learner_timeout
        self.resend_after, self.window = resend_after, window
        self.build_policy = build_policy
        self.session = uuid.uuid4().hex
        self.pending: OrderedDict[int, dict] = OrderedDict()  # seq -> {frames, seg, sent}
        self._seg_pending: dict[int, int] = {}
        self._seg_max: dict[int, int] = {}
        self.next_seq = self.counters.get("seq_floor", 0)
        for start, _, frames in self.spool.records():  # a restart: the spool is pending again
            self._pend(schema.decode(frames).fields["seq"], frames, start.segment)
        self._queue: queue.Queue = queue.Queue()
        self.policy: Any = None
        self.weights_version = -1
        self.learner_session: str | None = None
        self.last_heard = 0.0
        self.control: str | None = None
        self.stats_fn: Callable[[], dict] = dict
        self.stats = {"batches_sent": 0, "batches_resent": 0, "batches_acked": 0, "transitions_spooled": 0,
                      "bad_messages": 0, "weights_received": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="actor-link", daemon=True)

    # -- spool bookkeeping ------------------------------------------------------------------
    def _pend(self, seq: int, frames: list, seg: int) -> None:
        self.pending[seq] = {"frames": frames, "seg": seg, "sent": 0.0}
        self._seg_pending[seg] = self._seg_pending.get(seg, 0) + 1
        self._seg_max[seg] = max(self._seg_max.get(seg, -1), seq)
        self.next_seq = max(self.next_seq, seq + 1)

    def _acked(self, seq: int) -> None:
        item = self.pending.pop(seq, None)
        if item is None:
            return
        self.stats["batches_acked"] += 1
        self._seg_pending[item["seg"]] -= 1
        for seg in [s for s, n in self._seg_pending.items() if n == 0 and s != self.spool.current_segment]:
            # persist the floor first: with the spool empty, restart must not reuse a seq
            self.counters.set("seq_floor", max(self.counters.get("seq_floor", 0), self._seg_max[seg] + 1))
            self.spool.delete_segment(seg)
            del self._seg_pending[seg], self._seg_max[seg]

    # -- control-loop side ------------------------------------------------------------------
    def start(self) -> "ActorLink":
        self._thread.start()
        return self

    def submit(self, transitions: list) -> None:
        """Hand over a batch of transitions (the control loop's only call)."""
        if transitions:
            self._queue.put(list(transitions))

    @property
    def connected(self) -> bool:
        return time.monotonic() - self.last_heard < self.learner_timeout

    @property
    def rejected(self) -> bool:
        """The learner refused this actor's CURVE key on the last handshake."""
        return self.sock.auth_failed

    def check_key(self) -> None:
        """Raise PermissionError (one line: which key, what to do) if the learner rejected our key."""
        if self.rejected:
            raise PermissionError(f"the learner at {self.sock.address} rejected this actor's CURVE key (fingerprint "
                                  f"'{self.sock.fingerprint}'): add {self.public_key} to the learner's allow-list")

    def wait_for_learner(self, timeout: float) -> bool:
        """At start-up (after :meth:`start`): True once the learner accepted this actor; a
        rejected key raises PermissionError; False with a warning after ``timeout`` seconds
        of no learner (the actor then runs anyway and spools)."""
        end = time.monotonic() + timeout
        while not (self.sock.accepted or self.learner_session):
            self.check_key()
            if time.monotonic() > end:
                log.warning("no learner at %s after %.0f s: acting anyway, transitions spool until it answers",
                            self.sock.address, timeout)
                return False
            time.sleep(0.02)
        return True

    def wait_acked(self, timeout: float) -> bool:
        """Block until everything submitted is acked (shutdown); False on timeout."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._queue.empty() and not self.pending:
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.spool.close()
        self.sock.close()

    # -- the link thread ------------------------------------------------------------------
    def _run(self) -> None:
        last_beat = last_hello = 0.0
        while not self._stop.is_set():
            try:
                self._spool_new()
                now = time.monotonic()
                # hello: every second while the learner is silent, every 5 s anyway (a learner that
                # restarted faster than learner_timeout answers with a new session)
                if now - last_hello > (5.0 if self.connected else 1.0):
                    self.sock.send(schema.encode("hello", {"actor": self.actor_id, "session": self.session}))
                    last_hello = now
                if now - last_beat > self.heartbeat:
                    stats = {**self.stats, **self.stats_fn(), "pending": len(self.pending),
                             "weights_version": self.weights_version}
                    self.sock.send(schema.encode("heartbeat", {"time": time.time(), "stats": _plain(stats)}))
                    last_beat = now
                self._resend(now)
                self._receive(timeout_ms=0 if not self._queue.empty() else 5)
            except Exception as exc:  # the link must outlive any single bad event
                log.exception("actor link error: %s", exc)
                time.sleep(0.1)

    def _spool_new(self, limit: int = 8) -> None:
        """Spool and send up to ``limit`` new batches (small groups keep the pipe to the learner busy)."""
        fresh = []
        while len(fresh) < limit:
            try:
                batch = self._queue.get_nowait()
            except queue.Empty:
                break
            seq = self.next_seq
            frames = schema.pack_transitions(batch, seq)
            self._pend(seq, frames, self.spool.append(frames, sync=False).segment)
            self.stats["transitions_spooled"] += len(batch)
            fresh.append(seq)
        if fresh:
            self.spool.sync(force=False)  # durable before the first send
            for seq in fresh:
                self._send(seq, resend=False)

    def _send(self, seq: int, resend: bool) -> None:
        item = self.pending[seq]
        if self.sock.send(item["frames"]):
            item["sent"] = time.monotonic()
            self.stats["batches_resent" if resend else "batches_sent"] += 1

    def _resend(self, now: float) -> None:
        if not self.connected:
            return
        budget = self.window
        for seq, item in self.pending.items():
            if budget == 0:
                break
            if now - item["sent"] > self.resend_after:
                self._send(seq, resend=item["sent"] > 0)
                budget -= 1

    def _receive(self, timeout_ms: int) -> None:
        newest = None
        frames = self.sock.recv(timeout_ms)
        while frames is not None:
            try:
                msg = schema.decode(frames)
                newest = self._handle(msg, newest)
            except schema.SchemaError as exc:
                self.stats["bad_messages"] += 1
                log.error("actor %s dropped a malformed message from the learner: %s", self.actor_id, exc)
            frames = self.sock.recv(0)
        if newest is not None:
            self._load_weights(newest)

    def _handle(self, msg: schema.Message, newest: schema.Message | None) -> schema.Message | None:
        self.last_heard = time.monotonic()
        if msg.type == "ack":
            seqs = msg.fields["seqs"]
            if not all(isinstance(s, int) for s in seqs):
                raise schema.SchemaError("ack 'seqs' must be a list of int")
            for s in seqs:
                self._acked(s)
        elif msg.type == "welcome":
            if msg.fields["session"] != self.learner_session:
                if self.learner_session is not None:  # the learner restarted: resend everything now,
                    for item in self.pending.values():  # and take its weights whatever their version
                        item["sent"] = 0.0
                    self.weights_version = -1
                self.learner_session = msg.fields["session"]
        elif msg.type == "weights":
            if msg.fields["version"] > self.weights_version and (
                newest is None or msg.fields["version"] > newest.fields["version"]
            ):
                return msg
        elif msg.type == "control":
            if msg.fields["command"] not in schema.CONTROL_COMMANDS:
                raise schema.SchemaError(f"unknown control command {msg.fields['command'][:20]!r}")
            self.control = msg.fields["command"]
        return newest

    def _load_weights(self, msg: schema.Message) -> None:
        if self.build_policy is None:
            return
        try:
            self.policy = self.build_policy(msg.fields["spec"], msg.arrays)
        except (ValueError, KeyError, RuntimeError, TypeError) as exc:
            self.stats["bad_messages"] += 1
            log.error("actor %s rejected weights v%s: %s", self.actor_id, msg.fields["version"], exc)
            return
        self.weights_version = msg.fields["version"]
        self.stats["weights_received"] += 1


def _plain(d: dict) -> dict:
    return {k: (float(v) if not isinstance(v, (int, str, bool)) else v) for k, v in d.items()}
