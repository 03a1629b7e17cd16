"""The learner server: receives transitions from actors, trains SAC, publishes weights.

Loop (one thread owns the socket, the replay and the learner):

1. **receive** up to ``max_batch_messages`` messages. A ``transitions`` batch from actor
   ``a`` with sequence number ``s`` that was seen before is a duplicate: it is acked
   again and dropped. A new one is appended to the durable log, added to the replay
   (through the reward labeler) and marked seen.
2. **ack after durable**: the log is fsynced (policy ``log_fsync``) and only then the
   batch's sequence number is acked, so once an actor sees an ack the batch survives a
   SIGKILL of the learner: on restart the learner loads its last checkpoint (replay,
   dedup state and the log position included) and re-reads the log from that position.
   A checkpoint rotates the log and deletes segments it covers.
3. **train** at an enforced update-to-data ratio: after ``learning_starts`` transitions,
   exactly one ``update()`` call (= ``learner.utd`` critic steps on ``batch_size * utd``
   rows) per received transition; debt is worked off a few calls per loop so the
   sockets stay served. Intervention transitions go to the online replay and to the
   offline replay (with any ``demos`` dataset): the RLPD half of every batch.
4. **publish** weights every ``publish_every`` updates to each live actor (newest wins;
   an actor that has not caught up with the previous version is skipped for a while).
5. **checkpoint** everything every ``checkpoint.every_seconds`` and on SIGTERM / SIGINT;
   the learner alone (networks, optimisers, temperature, update counter, weights
   version: small) every ``checkpoint.learner_every_seconds`` into ``learner_ckpt/``.
   A restart loads the full checkpoint, re-reads the log, then takes the learner from
   ``learner_ckpt/`` when it holds more updates, so a SIGKILL costs seconds of training.

Malformed messages are logged with a one-line reason and dropped; nothing received is
unpickled or executed (see ``real_robot.bridge.schema``).
"""

from __future__ import annotations

import json
import logging
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import torch

from embodied import checkpoint, heap
from embodied.logging import json_safe
from real_robot.bridge import schema
from real_robot.bridge.spool import Position, Spool
from real_robot.bridge.transport import LearnerSocket

log = logging.getLogger(__name__)


class Dedup:
    """Seen sequence numbers per actor: all below ``low`` plus the set above it."""

    def __init__(self):
        self.low: dict[str, int] = {}
        self.above: dict[str, set[int]] = {}

    def seen(self, actor: str, seq: int) -> bool:
        return seq < self.low.get(actor, 0) or seq in self.above.get(actor, ())

    def mark(self, actor: str, seq: int) -> None:
        above = self.above.setdefault(actor, set())
        above.add(seq)
        low = self.low.get(actor, 0)
        while low in above:
            above.remove(low)
            low += 1
        self.low[actor] = low

    def state(self) -> str:
        return json.dumps({a: [self.low.get(a, 0), sorted(self.above.get(a, ()))] for a in self.low})

    def load(self, text: str) -> None:
        for actor, (low, above) in json.loads(text).items():
            self.low[actor], self.above[actor] = int(low), {int(s) for s in above}


def spaces_from(cfg) -> tuple[Any, Any]:
    """Observation / action spaces the actors' robots produce (``spaces:`` in the config)."""
    from envs.core import observation_space, unit_action_space

    cams = list(cfg.get("cameras") or [])
    return observation_space(int(cfg["state_dim"]), cams, int(cfg.get("image_size", 64))), \
        unit_action_space(int(cfg["action_dim"]))


class LearnerServer:
    def __init__(self, cfg, run_dir: str | Path, sock: LearnerSocket | None = None):
        from embodied.build import make_labeler
        from embodied.build import build_learner, build_replays
        from real_robot.bridge.memory import keep_freed_buffers

        keep_freed_buffers()  # received camera frames from the heap, not fresh mmap pages
        self.cfg = cfg
        # read per transition / message: plain attributes, not lookups through the config tree
        self._residual = cfg.learner.name == "residual"
        self._max_batch = int(cfg.bridge.max_batch_messages)
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        obs_space, act_space = spaces_from(cfg.spaces)
        t = cfg.train
        replays = build_replays(t, obs_space, act_space, cfg.seed, capacity=t.replay_capacity, dataset=cfg.get("demos"),
                                offline_capacity=t.offline_capacity, offline_seed=cfg.seed + 1)
        self.online, self.offline, self.replay = replays.online, replays.offline, replays.sampled
        self.learner = build_learner(cfg.learner, obs_space, act_space, offline=self.offline,
                                     base_policy=cfg.get("base_policy"))
        self.rows = self.learner.rows_per_update
        self.reward, camera = self._reward_model(cfg, obs_space)
        # one labeler: interventions copied into the offline half share the original's label
        self.labeler = make_labeler(self.online, self.reward, camera)
        self.log = Spool(self.dir / "log", fsync=cfg.bridge.log_fsync, segment_bytes=64 << 20)
        self.log_pos = Position(0, 0)
        self.dedup = Dedup()
        self.actors: list[str] = []  # actor name -> index in episode ids
        self.counters = {"transitions": 0, "duplicates": 0, "bad_messages": 0, "updates": 0, "weights_version": 0,
                         "batches": 0}
        self.peers: dict[bytes, dict[str, Any]] = {}  # routing id -> {name, seen, sent_version, sent_at, has}
        self.session = uuid.uuid4().hex
        self.stopping = False
        self._last_ckpt = self._last_stats = self._last_learner_ckpt = time.monotonic()
        self._restore()
        self._learner_saved = self.counters["updates"]
        b = cfg.bridge
        self.sock = sock if sock is not None else \
            LearnerSocket(b.bind, b.get("secret_key"), b.get("allow_dir"), b.insecure_loopback)

    @staticmethod
    def _reward_model(cfg, obs_space):
        """The reward exactly as ``embodied-train`` builds it (embodied/build.py)."""
        from embodied.build import build_reward, reward_camera

        built = build_reward(cfg.reward)
        if built.model is None:
            return built, None
        cams = list(obs_space["pixels"].spaces) if "pixels" in obs_space.spaces else []
        return built, reward_camera(built.model, cams, "spaces.cameras")

    # -- ingest ---------------------------------------------------------------------------
    def _episode_id(self, actor: str, eid: int) -> int:
        if actor not in self.actors:
            self.actors.append(actor)
        return (self.actors.index(actor) << 32) | (eid & 0xFFFFFFFF)

    def _ingest(self, actor: str, msg: schema.Message) -> None:
        transitions = schema.unpack_transitions(msg)
        for t in transitions:  # validate the whole batch before any of it is stored
            self._check(t)
        for t in transitions:
            t.episode_id = self._episode_id(actor, t.episode_id)
            self.labeler.add(t, copy_to=self.offline if t.intervention else None)
        self.counters["transitions"] += len(transitions)
        self.counters["batches"] += 1

    def _check(self, t) -> None:
        r = self.online
        if self._residual and "base_action" not in t.extras:
            raise schema.SchemaError("learner=residual needs each transition's base action: start embodied-actor "
                                     "with base_policy=<the base checkpoint on the robot computer>")
        if r.has_state and np.shape(t.obs.get("state")) != (r.state_dim,):
            raise schema.SchemaError(f"state of shape {np.shape(t.obs.get('state'))}, learner expects ({r.state_dim},)")
        if np.shape(t.action) != (r.action_dim,):
            raise schema.SchemaError(f"action of shape {np.shape(t.action)}, learner expects ({r.action_dim},)")
        for cam, shape in r.frame_shapes.items():
            if np.shape(t.obs.get("pixels", {}).get(cam)) != shape:
                raise schema.SchemaError(f"camera {cam!r} frames must be {shape}; set spaces.* to match the robot")
        spec = r.extras_spec  # the layout of the first transition stored, once there is one
        if spec is not None and (sorted(t.extras) != sorted(spec) or any(
                np.shape(t.extras[k]) != shape or np.asarray(t.extras[k]).dtype != dtype
                for k, (shape, dtype) in spec.items())):
            raise schema.SchemaError(f"transition extras {sorted(t.extras)} do not match the stored layout "
                                     f"{ {k: list(v[0]) for k, v in spec.items()} }: every actor must send the same")

    def _restore(self) -> None:
        path = checkpoint.latest(self.dir / "ckpt")
        if path is not None:
            state = checkpoint.load(path)
            self.learner.load_state_dict(state["learner"])
            self.online.load_state_dict(state["online"])
            self.offline.load_state_dict(state["offline"])
            self.labeler.load_state_dict(state["labeler"])
            self.dedup.load(state["bridge"]["dedup"])
            self.actors = json.loads(state["bridge"]["actors"])
            self.log_pos = Position(*[int(x) for x in state["bridge"]["log_pos"]])
            self.counters.update({k: int(v) for k, v in state["counters"].items()})
            log.info("resumed from %s: %d transitions, %d updates", path, self.counters["transitions"],
                     self.counters["updates"])
        replayed = 0
        for _, end, frames in self.log.records(self.log_pos):
            actor = msgpack.unpackb(frames[0], raw=False)["actor"]
            msg = schema.decode(frames[1:])
            if not self.dedup.seen(actor, msg.fields["seq"]):
                self._ingest(actor, msg)
                self.dedup.mark(actor, msg.fields["seq"])
                replayed += 1
        if replayed:
            log.info("re-read %d acked batches from the durable log", replayed)
        self._restore_learner()

    def _restore_learner(self) -> None:
        """Take the learner from ``learner_ckpt/`` when it is ahead of the full checkpoint."""
        path = checkpoint.latest(self.dir / "learner_ckpt")
        if path is None:
            return
        state = checkpoint.load(path)
        updates = int(state["counters"]["updates"])
        if updates <= self.counters["updates"]:
            return
        log.info("resumed the learner from %s: %d updates (the full checkpoint had %d)", path, updates,
                 self.counters["updates"])
        self.learner.load_state_dict(state["learner"])
        self.counters.update({k: int(v) for k, v in state["counters"].items()})

    # -- network --------------------------------------------------------------------------
    def _pump(self, timeout_ms: int) -> int:
        acks: dict[bytes, list[int]] = {}
        handled = 0
        item = self.sock.recv(timeout_ms)
        while item is not None:
            peer, user, frames = item
            handled += 1
            try:
                self._handle(peer, user, frames, acks)
            except schema.SchemaError as exc:
                self.counters["bad_messages"] += 1
                log.error("dropped a malformed message from %s: %s", _who(peer, user), exc)
            if handled >= self._max_batch:
                break
            item = self.sock.recv(0)
        if acks:
            self.log.sync(force=False)  # durable (per log_fsync) first, then ack
            for peer, seqs in acks.items():
                self.sock.send(peer, schema.encode("ack", {"seqs": seqs}))
        return handled

    def _handle(self, peer: bytes, user: str | None, frames: list, acks: dict) -> None:
        msg = schema.decode(frames)
        name = user or peer.decode("utf-8", "replace")
        info = self.peers.setdefault(peer, {"name": name, "sent_version": -1, "sent_at": 0.0, "has": -1})
        info["seen"] = time.monotonic()
        if msg.type == "transitions":
            seq = msg.fields["seq"]
            if self.dedup.seen(name, seq):
                self.counters["duplicates"] += 1
            else:
                self._ingest(name, msg)  # validates fully before anything is logged
                self.log.append([msgpack.packb({"actor": name}), *frames], sync=False)
                self.dedup.mark(name, seq)
            acks.setdefault(peer, []).append(seq)
        elif msg.type == "hello":
            if info.get("session") != msg.fields["session"]:  # a new actor process: it has no weights
                log.info("actor %s connected (session %s%s)", name, str(msg.fields["session"])[:8],
                         f"; key {self.sock.key_of(name)}" if user else "")
                info["session"], info["sent_version"], info["has"] = msg.fields["session"], -1, -1
            self.sock.send(peer, schema.encode("welcome", {"session": self.session,
                                                          "version": self.counters["weights_version"]}))
            self._send_weights(peer, info, force=True)
        elif msg.type == "heartbeat":
            has = msg.fields["stats"].get("weights_version", -1)
            info["has"] = has if isinstance(has, int) else -1
            info["stats"] = msg.fields["stats"]
            self.sock.send(peer, schema.encode("heartbeat", {"time": time.time(), "stats": {}}))
        else:
            raise schema.SchemaError(f"actors may not send {msg.type!r} messages")

    def _weights_frames(self) -> list:
        policy = self.learner.policy()
        arrays = {k: v.detach().cpu().numpy() for k, v in self.learner.policy_weights().items()}
        return schema.encode("weights", {"version": self.counters["weights_version"], "spec": policy.spec()}, arrays)

    def _send_weights(self, peer: bytes, info: dict, force: bool = False, frames: list | None = None) -> None:
        version = self.counters["weights_version"]
        if version == 0 or info["sent_version"] >= version:
            return
        caught_up = info["has"] >= info["sent_version"]
        if force or caught_up or time.monotonic() - info["sent_at"] > 5.0:
            self.sock.send(peer, frames or self._weights_frames())
            info["sent_version"], info["sent_at"] = version, time.monotonic()

    def publish(self) -> None:
        self.counters["weights_version"] += 1
        frames = self._weights_frames()
        now = time.monotonic()
        for peer, info in self.peers.items():
            if now - info["seen"] < 10.0:
                self._send_weights(peer, info, frames=frames)

    # -- training -------------------------------------------------------------------------
    def owed_updates(self) -> int:
        t = self.cfg.train
        if self.counters["transitions"] < t.learning_starts:
            return 0
        return int(t.utd_ratio * self.counters["transitions"]) - self.counters["updates"]

    def train(self, max_calls: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for _ in range(min(max_calls, self.owed_updates())):
            if not self.labeler.learner_may_update():
                break
            try:
                batch = self.replay.sample_torch(self.rows, device=self.learner.device)
            except ValueError:  # nothing labeled and sampleable yet
                break
            metrics = self.learner.update(batch)
            self.counters["updates"] += 1
            if self.counters["updates"] % heap.EVERY == 0:
                heap.trim()  # freed update buffers grow the heap under keep_freed_buffers' thresholds too
                # (tests/test_heap.py); the next message re-faults its ~1 MB once, every 1,000 updates
            if self.counters["updates"] % self.cfg.train.publish_every == 0:
                self.publish()
        return metrics

    def feedback(self) -> dict[str, float]:
        """A trainable reward's feedback round (RL-VLM-F) every ``reward.feedback_every`` transitions.

        The round samples and relabels the online replay; the offline half (interventions,
        demos) is then rescored with the retrained model too.
        """
        metrics = self.labeler.maybe_feedback(self.counters["transitions"])
        if metrics:
            self.labeler.relabel(self.offline)
            log.info("reward feedback round %d: %s", self.labeler.stats["feedback_rounds"],
                     {k.split("/")[-1]: round(v, 3) for k, v in metrics.items()})
        return metrics

    def reward_stats(self) -> dict[str, Any]:
        """Labeling counters: labeled / failed episodes, feedback rounds, pending episodes."""
        lab = self.labeler
        out: dict[str, Any] = {"name": self.reward.name, **lab.stats, "pending_episodes": lab.pending}
        out["unlabeled_transitions"] = len(self.online) - self.online.num_labeled()
        out["last_failures"] = lab.failed[-5:]
        return out

    # -- checkpoint -----------------------------------------------------------------------
    def save(self) -> Path:
        self.labeler.flush()  # inline rewards of a partial chunk go into this checkpoint
        self.log.rotate()
        self.log_pos = self.log.end()
        state = {"learner": self.learner.state_dict(), "online": self.online.state_dict(),
                 "offline": self.offline.state_dict(),
                 "labeler": self.labeler.state_dict(),
                 "bridge": {"dedup": self.dedup.state(), "actors": json.dumps(self.actors),
                            "log_pos": np.array(self.log_pos, np.int64)},
                 "counters": dict(self.counters)}
        path = checkpoint.save(self.dir / "ckpt", self.counters["transitions"], state,
                               keep=self.cfg.checkpoint.keep)
        for seg in self.log.segments():
            if seg < self.log_pos.segment:
                self.log.delete_segment(seg)
        self._last_ckpt = time.monotonic()
        return path

    def save_learner(self) -> Path:
        """The learner alone, without the replay: cheap enough to save every few seconds."""
        state = {"learner": self.learner.state_dict(),
                 "counters": {k: self.counters[k] for k in ("updates", "weights_version")}}
        path = checkpoint.save(self.dir / "learner_ckpt", self.counters["updates"], state, keep=2)
        self._learner_saved, self._last_learner_ckpt = self.counters["updates"], time.monotonic()
        return path

    def write_stats(self) -> None:
        actors = {i["name"]: i.get("stats", {}) for i in self.peers.values()}
        stats = {**self.counters, "replay": len(self.online), "offline": len(self.offline),
                 "rejected_keys": self.sock.rejected, "reward": self.reward_stats(), "actors": actors}
        tmp = self.dir / ".learner_stats.json.tmp"
        tmp.write_text(json.dumps(json_safe(stats), allow_nan=False))
        tmp.replace(self.dir / "learner_stats.json")

    # -- main loop ------------------------------------------------------------------------
    def run(self, max_seconds: float = 0.0) -> None:
        start = time.monotonic()
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        log.info("learner ready: %d transitions, %d updates, weights v%d", self.counters["transitions"],
                 self.counters["updates"], self.counters["weights_version"])
        try:
            while not self.stopping and not (max_seconds and time.monotonic() - start > max_seconds):
                busy = self.owed_updates() > 0
                self._pump(0 if busy else 20)
                self.train(self.cfg.train.updates_per_pump)
                self.labeler.poll()
                self.feedback()
                now = time.monotonic()
                if now - self._last_stats > 1.0:
                    self.write_stats()
                    self._last_stats = now
                if now - self._last_ckpt > self.cfg.checkpoint.every_seconds:
                    self.save()
                elif (self.counters["updates"] > self._learner_saved
                      and now - self._last_learner_ckpt > self.cfg.checkpoint.learner_every_seconds):
                    self.save_learner()
        finally:
            self.save()
            self.write_stats()
            self.labeler.close(wait=False)
            self.log.close()
            self.sock.close()

    def _stop(self, *_: Any) -> None:
        self.stopping = True


def _who(peer: bytes, user: str | None) -> str:
    return user or repr(peer[:32])
