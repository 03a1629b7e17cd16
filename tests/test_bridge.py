"""Bridge units: wire schema, spool, dedup, keys and CURVE sockets (in-process, real TCP)."""

from __future__ import annotations

import logging
import os
import threading
import time

import msgpack
import numpy as np
import pytest
from zmq.utils import z85

from embodied.contracts import Transition
from real_robot.bridge import keys, schema, transport
from real_robot.bridge.spool import Counters, Spool
from real_robot.learner import Dedup


def _obs(i: int, pixels: bool = True) -> dict:
    obs = {"state": np.full(3, i, np.float32), "instruction": f"task {i % 2}"}
    if pixels:
        obs["pixels"] = {"front": np.full((8, 8, 3), i, np.uint8), "wrist": np.full((8, 8, 3), 100 + i, np.uint8)}
    return obs


def _episode(eid: int, n: int, start: int = 0, end: str = "truncated") -> list[Transition]:
    out = []
    for i in range(start, start + n):
        last = i == start + n - 1
        out.append(Transition(_obs(i), np.array([i, -i], np.float32) / 100, float(i), _obs(i + 1),
                              terminated=last and end == "terminated", truncated=last and end == "truncated",
                              is_first=i == 0, episode_id=eid, step=i, intervention=i % 3 == 0,
                              info={"success": i == 4, "progress": 0.1 * i}))
    return out


def test_transitions_round_trip_and_next_obs_sent_once():
    batch = _episode(7, 3, end="terminated") + _episode(8, 2, end="none")
    frames = schema.pack_transitions(batch, seq=42)
    msg = schema.decode([bytes(f) for f in frames])
    assert msg.type == "transitions" and msg.fields["seq"] == 42
    # 5 obs rows + 1 final obs of episode 7 + 1 next obs of the open episode 8
    assert msg.arrays["pixels/front"].shape == (7, 8, 8, 3)
    out = schema.unpack_transitions(msg)
    for a, b in zip(out, batch):
        assert (a.episode_id, a.step, a.terminated, a.truncated, a.is_first, a.intervention) == \
            (b.episode_id, b.step, b.terminated, b.truncated, b.is_first, b.intervention)
        np.testing.assert_array_equal(a.action, b.action)
        for key in ("front", "wrist"):
            np.testing.assert_array_equal(a.next_obs["pixels"][key], b.next_obs["pixels"][key])
        np.testing.assert_array_equal(a.next_obs["state"], b.next_obs["state"])
        assert a.obs["instruction"] == b.obs["instruction"] and a.info == b.info and a.reward == b.reward


def test_received_arrays_are_zero_copy_views():
    frames = schema.pack_transitions(_episode(1, 2), seq=0)
    raw = [bytearray(bytes(f)) for f in frames]
    msg = schema.decode(raw)
    raw[1 + [s[0] for s in msgpack.unpackb(raw[0])["a"]].index("state")][0:4] = np.float32(9).tobytes()
    assert msg.arrays["state"][0, 0] == 9.0  # the array reads the frame's memory


def _bad(frames, match):
    with pytest.raises(schema.SchemaError, match=match):
        m = schema.decode(frames)
        if m.type == "transitions":
            schema.unpack_transitions(m)


def test_malformed_messages_get_one_line_reasons():
    good = [bytes(f) for f in schema.pack_transitions(_episode(1, 2), seq=0)]
    header = msgpack.unpackb(good[0])
    _bad([], "empty")
    _bad([b"\xc1garbage"], "not valid msgpack")
    _bad([msgpack.packb([1, 2])], "must be a map")
    _bad([msgpack.packb({**header, "v": 99}), *good[1:]], "version")
    _bad([msgpack.packb({**header, "t": "exec"}), *good[1:]], "unknown message type")
    _bad([msgpack.packb({**header, "seq": "1"}), *good[1:]], "seq")
    _bad(good[:-1], "buffer frames")
    _bad([good[0], *good[1:-1], good[-1][:-1]], "needs")
    specs = [list(s) for s in header["a"]]
    specs[0][1] = "object"
    _bad([msgpack.packb({**header, "a": specs}), *good[1:]], "not allowed")
    _bad([msgpack.packb({**header, "n": 5}), *good[1:]], "rows")
    _bad([msgpack.packb(msgpack.ExtType(1, b"x"))], "extension")
    _bad([msgpack.packb({"v": 1, "t": "ack", "a": [], "seqs": [1], "x": b"bin"})], "msgpack")
    huge = [["x", "float64", [0, 2**31 - 1, 2**31 - 1]]]  # 0 bytes, like its empty frame, but unbuildable
    _bad([msgpack.packb({"v": 1, "t": "ack", "a": huge, "seqs": [1]}), b""], "cannot be built")


def test_fuzzed_frames_never_crash_decode():
    rng = np.random.default_rng(0)
    good = [bytes(f) for f in schema.pack_transitions(_episode(1, 3), seq=0)]
    errors = 0
    for i in range(3000):
        frames = [bytearray(f) for f in good]
        k = rng.integers(len(frames))
        if i % 3 == 0:
            frames[k] = frames[k][: rng.integers(len(frames[k]) + 1)]  # truncated
        elif i % 3 == 1:
            frames[k] = bytearray(rng.bytes(rng.integers(64)))  # random
        else:
            pos = rng.integers(len(frames[k])) if len(frames[k]) else 0
            frames[k][pos:pos + 1] = rng.bytes(1)  # flipped byte
        try:
            schema.unpack_transitions(schema.decode(frames)) if schema.decode(frames).type == "transitions" else None
        except schema.SchemaError:
            errors += 1
    assert errors > 1500  # most mutations are caught; none raised anything but SchemaError


def test_spool_survives_a_torn_tail_and_reads_back(tmp_path):
    sp = Spool(tmp_path, fsync="batch", segment_bytes=400)
    records = [[b"h%d" % i, os.urandom(150)] for i in range(6)]
    for r in records:
        sp.append(r)
    assert len(sp.segments()) > 1  # rotated
    sp.close()
    last = tmp_path / f"seg_{max(Spool(tmp_path).segments()):08d}.spool"
    with open(last, "ab") as f:
        f.write(b"ESP1\x02\x00\x00\x00")  # a crash mid-append
    sp = Spool(tmp_path)
    assert [f for _, _, f in sp.records()] == records
    sp.append([b"after"])
    assert [f for _, _, f in sp.records()][-1] == [b"after"]
    start = list(sp.records())[3][0]
    assert [f for _, _, f in sp.records(start)] == records[3:] + [[b"after"]]


def _esp1_record(frames: list[bytes]) -> bytes:
    """A record as spools wrote it before xxh3 (magic ESP1, u32 CRC32), built by hand."""
    import struct
    import zlib

    payload = b"".join(struct.pack("<Q", len(f)) + f for f in frames)
    return struct.pack("<4sIQI", b"ESP1", len(frames), len(payload), zlib.crc32(payload)) + payload


def test_spool_reads_old_crc32_records_and_appends_xxh3_after_them(tmp_path):
    old = [[b"hdr", bytes(range(256)) * 40], [b"x"]]
    (tmp_path / "seg_00000000.spool").write_bytes(b"".join(_esp1_record(r) for r in old))
    sp = Spool(tmp_path)
    assert [f for _, _, f in sp.records()] == old  # an actor upgraded with a full spool resends it
    sp.append([b"new", b"frame"])
    sp.close()
    data = (tmp_path / "seg_00000000.spool").read_bytes()
    assert data.count(b"ESP2") == 1 and data.count(b"ESP1") == 2
    assert [f for _, _, f in Spool(tmp_path).records()] == old + [[b"new", b"frame"]]


def test_spool_drops_a_record_whose_checksum_does_not_match(tmp_path):
    sp = Spool(tmp_path)
    sp.append([b"keep"])
    end = sp.end().offset
    sp.append([b"flipped-byte"])
    sp.close()
    path = tmp_path / "seg_00000000.spool"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the last payload byte: the xxh3 digest no longer matches
    path.write_bytes(bytes(data))
    sp = Spool(tmp_path)
    assert [f for _, _, f in sp.records()] == [[b"keep"]] and path.stat().st_size == end
    old = bytearray(_esp1_record([b"old"]))
    old[-1] ^= 0xFF  # and a bad CRC32 on an old record
    path.write_bytes(bytes(old))
    assert list(Spool(tmp_path).records()) == []


def test_spool_checksum_covers_the_header_and_a_torn_new_header_is_dropped(tmp_path):
    sp = Spool(tmp_path)
    sp.append([b"keep"])
    end = sp.end().offset
    sp.append([b"one", b"two"])
    sp.close()
    path = tmp_path / "seg_00000000.spool"
    data = bytearray(path.read_bytes())
    data[end + 4] = 1  # frame count 2 -> 1: the payload alone would still hash the same
    path.write_bytes(bytes(data[: len(data)]))
    assert [f for _, _, f in Spool(tmp_path).records()] == [[b"keep"]] and path.stat().st_size == end
    with open(path, "ab") as f:
        f.write(b"ESP2\x02\x00\x00\x00\x10")  # a crash inside the new header
    sp = Spool(tmp_path)
    sp.append([b"after"])
    assert [f for _, _, f in sp.records()] == [[b"keep"], [b"after"]]


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_buffers_sets_glibc_thresholds_unless_the_user_set_them():
    import subprocess
    import sys

    code = ("from real_robot.bridge.memory import keep_freed_buffers as k; "
            "print(k(), k())")  # the second call answers without calling mallopt again
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]
    env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_spool_rejects_unknown_policy_and_counters_persist(tmp_path):
    with pytest.raises(ValueError, match="fsync policy"):
        Spool(tmp_path, fsync="sometimes")
    c = Counters(tmp_path / "c.json")
    c.set("seq_floor", 12)
    assert Counters(tmp_path / "c.json").get("seq_floor") == 12


def test_dedup_low_water_mark_and_state_round_trip():
    d = Dedup()
    for s in (0, 1, 3, 4):
        d.mark("a", s)
    assert d.seen("a", 1) and d.seen("a", 4) and not d.seen("a", 2) and not d.seen("b", 0)
    assert d.low["a"] == 2 and d.above["a"] == {3, 4}
    d.mark("a", 2)
    assert d.low["a"] == 5 and not d.above["a"]
    e = Dedup()
    e.load(d.state())
    assert e.seen("a", 4) and not e.seen("a", 5)


def test_plaintext_only_on_loopback():
    assert transport.check_plaintext("tcp://127.0.0.1:5555", True)
    assert not transport.check_plaintext("tcp://10.0.0.2:5555", False)
    with pytest.raises(ValueError, match="only works on loopback"):
        transport.check_plaintext("tcp://0.0.0.0:5555", True)
    with pytest.raises(ValueError, match="only works on loopback"):
        transport.ActorSocket("tcp://192.168.1.4:5555", "a", insecure_loopback=True)
    with pytest.raises(ValueError, match="CURVE needs"):
        transport.LearnerSocket(f"tcp://127.0.0.1:{transport.free_port()}")


def test_keys_errors(tmp_path):
    keys.create(tmp_path, "a0")
    with pytest.raises(FileExistsError):
        keys.create(tmp_path, "a0")
    with pytest.raises(ValueError, match="key name"):
        keys.create(tmp_path, "../evil")
    with pytest.raises(FileNotFoundError, match="embodied-keygen"):
        keys.load(tmp_path / "nobody.key_secret")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no \\*.key"):
        keys.allow_list(tmp_path / "empty")
    assert oct((tmp_path / "a0.key_secret").stat().st_mode & 0o777) == "0o600"


def test_curve_allow_list_authenticates_and_rejects(tmp_path, caplog):
    keys.create(tmp_path, "learner")
    keys.create(tmp_path / "allow", "good")
    keys.create(tmp_path, "intruder")
    addr = f"tcp://127.0.0.1:{transport.free_port()}"
    server = transport.LearnerSocket(addr, str(tmp_path / "learner.key_secret"), str(tmp_path / "allow"))
    good = transport.ActorSocket(addr, "claims-to-be-anyone", str(tmp_path / "allow/good.key_secret"),
                                 str(tmp_path / "learner.key"))
    bad = transport.ActorSocket(addr, "good", str(tmp_path / "intruder.key_secret"), str(tmp_path / "learner.key"))
    try:
        with caplog.at_level(logging.ERROR):
            bad.send(schema.encode("hello", {"actor": "good", "session": "x"}))
            good.send(schema.encode("hello", {"actor": "good", "session": "y"}))
            peer, user, frames = server.recv(3000)
            assert user == "good"  # the key's name, whatever id the actor claims
            assert schema.decode(frames).fields["session"] == "y"
            assert server.recv(500) is None  # nothing from the intruder gets through
            for _ in range(20):
                bad.recv(50)
                if bad.auth_failed:
                    break
        assert bad.auth_failed and server.rejected >= 1
        # the log names the rejected key by the Z85 text its .key file holds, not raw bytes
        z85_text = keys.load(tmp_path / "intruder.key", secret=False).public
        fp = z85_text.decode()[:12]
        assert transport.fingerprint(z85_text) == transport.fingerprint(z85.decode(z85_text)) == fp
        rejected = [r.getMessage() for r in caplog.records if "not in the allow-list" in r.getMessage()]
        assert rejected and f"fingerprint '{fp}'" in rejected[0] and str(tmp_path / "allow") in rejected[0]
        assert any(f"fingerprint '{fp}'" in r.getMessage() and "rejected this actor's CURVE key" in r.getMessage()
                   for r in caplog.records)
        good_fp = keys.load(tmp_path / "allow/good.key", secret=False).public.decode()[:12]
        assert server.key_of("good") == f"{tmp_path / 'allow'}/good.key, fingerprint '{good_fp}'"
    finally:
        good.close()
        bad.close()
        server.close()


def test_spool_interval_policy_fsyncs_in_the_background_at_most_once_an_interval(tmp_path, monkeypatch):
    from real_robot.bridge import spool as spool_mod

    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(spool_mod.os, "fsync", lambda fd: (calls.append(threading.current_thread().name),
                                                           real_fsync(fd))[1])
    sp = Spool(tmp_path / "a", fsync="interval", interval=3600)
    for i in range(5):
        sp.append([b"r%d" % i])  # not due: in the page cache only, readable at once
    assert calls == [] and [f for _, _, f in sp.records()] == [[b"r%d" % i] for i in range(5)]
    sp.close()  # close makes everything durable, in the caller's thread
    assert calls == ["MainThread"]

    calls.clear()
    sp = Spool(tmp_path / "b", fsync="interval", interval=0.0)
    sp.append([b"x"])
    sp._wait_background()
    assert calls == ["spool-fsync"]  # due: fsync ran off the caller's thread
    sp.close()
    sp = Spool(tmp_path / "r", fsync="interval", interval=3600, segment_bytes=64)
    calls.clear()
    records = [[os.urandom(100)] for _ in range(3)]
    for r in records:
        sp.append(r)  # each append past 64 bytes rotates: the full segment is fsynced off-thread
    sp._wait_background()
    assert len(sp.segments()) == 3 and calls == ["spool-fsync"] * 2
    assert [f for _, _, f in sp.records()] == records
    sp.close()
    sp = Spool(tmp_path / "c", fsync="batch")
    calls.clear()
    sp.append([b"y"])
    assert calls == ["MainThread"]  # batch: fsync before append returns
    sp.close()


class Still:
    chunk_size = 1

    def act(self, obs, deterministic=False):
        return np.zeros((1, 2), np.float32)


def _rebind(make, tries: int = 100):
    """A second learner socket in this process: the first one's ZAP endpoint is released asynchronously."""
    import zmq

    for _ in range(tries - 1):
        try:
            return make()
        except zmq.ZMQError:
            time.sleep(0.05)
    return make()


def test_an_actor_stops_driving_when_the_learner_rejects_its_key_mid_run(tmp_path):
    from real_robot.actor import Actor, LoopConfig
    from real_robot.bridge.link import ActorLink
    from real_robot.robots import RobotEnv, SimRobot

    keys.create(tmp_path, "learner")
    keys.create(tmp_path / "allow", "a0")
    keys.create(tmp_path / "other", "someone")
    addr = f"tcp://127.0.0.1:{transport.free_port()}"
    learner = str(tmp_path / "learner.key_secret")
    server = transport.LearnerSocket(addr, learner, str(tmp_path / "allow"))
    link = ActorLink(addr, "a0", str(tmp_path / "spool"), secret_key=str(tmp_path / "allow/a0.key_secret"),
                     server_key=str(tmp_path / "learner.key")).start()
    env = RobotEnv(SimRobot("reach", seed=1), max_episode_steps=50)
    holds = []
    env.hold = lambda: holds.append(1)
    actor = Actor(env, link, policy=Still(), cfg=LoopConfig(hz=100, mode="none"))
    runner = threading.Thread(target=actor.run)
    try:
        assert link.wait_for_learner(10.0)  # accepted: the actor may drive
        runner.start()
        for _ in range(100):
            if actor.counts["steps"] >= 5:
                break
            time.sleep(0.05)
        server.close()  # the learner comes back with an allow-list that lacks a0
        server = _rebind(lambda: transport.LearnerSocket(addr, learner, str(tmp_path / "other")))
        runner.join(timeout=30)
        assert not runner.is_alive() and link.rejected  # stopped by itself, no stop() call
        assert holds and actor.counts["steps"] >= 5
        with pytest.raises(PermissionError, match=f"add {tmp_path / 'allow/a0.key'} to the learner's allow-list"):
            link.check_key()
    finally:
        actor.stop()
        if runner.is_alive():
            runner.join(timeout=5)
        link.close()
        env.close()
        server.close()


def test_an_actor_without_a_learner_waits_at_most_connect_timeout_then_acts(tmp_path, caplog):
    from real_robot.bridge.link import ActorLink

    keys.create(tmp_path, "learner")
    keys.create(tmp_path, "a0")
    link = ActorLink(f"tcp://127.0.0.1:{transport.free_port()}", "a0", str(tmp_path / "spool"),
                     secret_key=str(tmp_path / "a0.key_secret"), server_key=str(tmp_path / "learner.key")).start()
    try:
        with caplog.at_level(logging.WARNING):
            assert link.wait_for_learner(0.3) is False and not link.rejected
        assert any("acting anyway" in r.getMessage() for r in caplog.records)
    finally:
        link.close()
