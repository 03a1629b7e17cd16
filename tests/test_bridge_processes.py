"""The real loop: learner and actors as separate processes over real TCP (loopback) with CURVE.

Each test starts the ``embodied-learner`` / ``embodied-actor`` commands on a random free
port and always kills them at the end.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from embodied import checkpoint
from real_robot.bridge import keys, schema, transport

BIN = Path(sys.executable).parent
ENV = {**os.environ, "MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa", "WANDB_MODE": "offline",
       "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


class Procs:
    def __init__(self, root: Path):
        self.root, self.procs = root, []

    def start(self, cmd: str, name: str, *overrides: str) -> subprocess.Popen:
        out = open(self.root / f"{name}.log", "ab")
        p = subprocess.Popen([str(BIN / cmd), *overrides], stdout=out, stderr=subprocess.STDOUT, env=ENV,
                             cwd=self.root)
        self.procs.append(p)
        return p

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")


@pytest.fixture
def procs(tmp_path):
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.kill_all()


@pytest.fixture
def curve(tmp_path):
    k = tmp_path / "keys"
    keys.create(k, "learner")
    for name in ("actor0", "actor1", "fuzzer"):
        keys.create(k / "allowed", name)
        (k / "allowed" / f"{name}.key_secret").rename(k / f"{name}.key_secret")
    keys.create(k, "intruder")
    return k


def wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} while waiting for {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stats(run: Path) -> dict:
    try:
        return json.loads((run / "learner_stats.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def learner_args(root: Path, port: int, *extra: str, starts: int = 1_000_000, ckpt: float = 2) -> list[str]:
    """Learner overrides; by default it never trains (these tests are about the data path)."""
    return [f"run_dir={root / 'learner'}", f"bridge.bind=tcp://127.0.0.1:{port}",
            f"bridge.secret_key={root / 'keys/learner.key_secret'}", f"bridge.allow_dir={root / 'keys/allowed'}",
            f"checkpoint.every_seconds={ckpt}", f"train.learning_starts={starts}", *extra]


def actor_args(root: Path, port: int, name: str, steps: int, *extra: str, key: str | None = None,
               wait: float = 60) -> list[str]:
    return [f"actor_id={name}", f"connect=tcp://127.0.0.1:{port}", f"run_dir={root / name}",
            f"curve.secret={root / 'keys' / f'{key or name}.key_secret'}", f"curve.server={root / 'keys/learner.key'}",
            f"loop.max_steps={steps}", "link.resend_after=1.0", f"link.shutdown_wait={wait}", *extra]


def replay_contents(root: Path) -> tuple[int, set]:
    state = checkpoint.load(root / "learner" / "ckpt")
    slots = state["online"]["slots"]
    pairs = set(zip(slots["episode_id"].tolist(), slots["step"].tolist()))
    return len(slots["episode_id"]), pairs


def test_learner_sigkilled_twice_loses_and_duplicates_nothing(tmp_path, procs, curve):
    port = transport.free_port()
    learner = procs.start("embodied-learner", "learner1", *learner_args(tmp_path, port))
    actor = procs.start("embodied-actor", "actor0", *actor_args(tmp_path, port, "actor0", 600, "loop.hz=20"))
    run = tmp_path / "learner"
    seen = wait_for(lambda: stats(run).get("transitions", 0) >= 100 and stats(run)["transitions"], 120,
                    "first transitions", learner)
    learner.send_signal(signal.SIGKILL)
    learner.wait(10)
    learner = procs.start("embodied-learner", "learner2", *learner_args(tmp_path, port))
    wait_for(lambda: stats(run).get("transitions", 0) >= seen + 100, 120, "transitions after restart 1", learner)
    learner.send_signal(signal.SIGKILL)
    learner.wait(10)
    time.sleep(1.0)  # the actor keeps acting and spooling while no learner is up
    learner = procs.start("embodied-learner", "learner3", *learner_args(tmp_path, port))
    wait_for(lambda: "learner listening" in procs.log("learner3"), 120, "third learner up", learner)
    assert actor.wait(240) == 0, procs.log("actor0")[-2000:]
    actor_stats = json.loads((tmp_path / "actor0" / "actor_stats.json").read_text())
    learner.send_signal(signal.SIGTERM)
    assert learner.wait(60) == 0
    size, pairs = replay_contents(tmp_path)
    assert actor_stats["transitions_submitted"] == 600 and actor_stats["link_pending"] == 0
    assert size == 600 and len(pairs) == 600  # every transition once: nothing lost, no duplicates
    assert actor_stats["link_batches_resent"] > 0  # the kills really cut batches in flight
    assert list((tmp_path / "actor0" / "spool").glob("seg_*.spool"))  # the current segment remains


def test_two_actors_feed_one_learner_and_an_unlisted_key_is_rejected(tmp_path, procs, curve):
    port = transport.free_port()
    learner = procs.start("embodied-learner", "learner", *learner_args(tmp_path, port))
    a0 = procs.start("embodied-actor", "actor0", *actor_args(tmp_path, port, "actor0", 150))
    a1 = procs.start("embodied-actor", "actor1", *actor_args(tmp_path, port, "actor1", 120, "seed=1"))
    intruder = procs.start("embodied-actor", "intruder", *actor_args(tmp_path, port, "intruder", 30, key="intruder"))
    assert intruder.wait(120) == 2  # stopped at start-up: its key is not allowed
    assert a0.wait(240) == 0 and a1.wait(240) == 0
    learner.send_signal(signal.SIGTERM)
    assert learner.wait(60) == 0
    size, pairs = replay_contents(tmp_path)
    assert size == 270 and len(pairs) == 270
    episode_owner = {eid >> 32 for eid, _ in pairs}
    assert len(episode_owner) == 2  # two actors, disjoint episode ids
    final = stats(tmp_path / "learner")
    assert set(final["actors"]) == {"actor0", "actor1"} and final["rejected_keys"] >= 1
    fp = keys.load(curve / "intruder.key", secret=False).public.decode()[:12]  # Z85, as in its .key file
    assert f"fingerprint '{fp}') is not in the allow-list" in procs.log("learner")
    errors = [line for line in procs.log("intruder").splitlines() if line.startswith("error:")]
    assert errors == [f"error: the learner at tcp://127.0.0.1:{port} rejected this actor's CURVE key (fingerprint "
                      f"'{fp}'): add {curve / 'intruder.key'} to the learner's allow-list"]
    assert "Traceback" not in procs.log("intruder")
    assert not (tmp_path / "intruder" / "actor_stats.json").exists()  # its control loop never ran: 0 robot steps


def learner_ckpt(run: Path) -> dict:
    try:
        return checkpoint.load(run / "learner_ckpt")
    except FileNotFoundError:  # none yet, or rotated away while we read
        return {}


def test_a_learner_sigkilled_before_its_full_checkpoint_keeps_its_training(tmp_path, procs, curve):
    port = transport.free_port()
    args = learner_args(tmp_path, port, "checkpoint.learner_every_seconds=0.5", starts=100, ckpt=600)
    learner = procs.start("embodied-learner", "learner1", *args)
    actor = procs.start("embodied-actor", "actor0", *actor_args(tmp_path, port, "actor0", 300, "loop.hz=50"))
    assert actor.wait(120) == 0  # all 300 transitions acked
    run = tmp_path / "learner"
    before = wait_for(lambda: (s := learner_ckpt(run)) and int(s["counters"]["updates"]) == 300 and s, 120,
                      "a learner checkpoint of all 300 updates", learner)
    learner.send_signal(signal.SIGKILL)
    learner.wait(10)
    assert checkpoint.latest(run / "ckpt") is None  # killed before its first full checkpoint

    start = time.monotonic()
    learner = procs.start("embodied-learner", "learner2", *args)
    listening = wait_for(lambda: "learner listening" in procs.log("learner2") and time.monotonic() - start, 120,
                         "restarted learner listening", learner)
    ready = wait_for(lambda: "learner ready" in procs.log("learner2") and time.monotonic() - start, 120,
                     "restarted learner ready", learner)
    print(f"restart: listening after {listening:.2f} s, ready after {ready:.2f} s")  # measured, never asserted
    learner.send_signal(signal.SIGTERM)
    assert learner.wait(60) == 0
    after = checkpoint.load(run / "ckpt")
    assert "resumed the learner from" in procs.log("learner2")
    assert int(after["counters"]["transitions"]) == 300 and int(after["counters"]["updates"]) == 300  # UTD kept
    assert after["counters"]["weights_version"] == before["counters"]["weights_version"] > 0
    for name, value in before["learner"]["actor"].items():  # the trained networks, not a fresh start
        assert np.array_equal(after["learner"]["actor"][name].numpy(), value.numpy()), name


class Boom:
    """A pickle that would create a file if anyone unpickled it."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _fuzz_frames(rng: np.random.Generator, good: list[bytes], i: int) -> list[bytes]:
    frames = [bytearray(f) for f in good]
    k = int(rng.integers(len(frames)))
    mode = i % 4
    if mode == 0:
        frames[k] = frames[k][: int(rng.integers(len(frames[k]) + 1))]
    elif mode == 1:
        frames = [bytearray(rng.bytes(int(rng.integers(1, 300)))) for _ in range(int(rng.integers(1, 4)))]
    elif mode == 2 and len(frames[k]):
        pos = int(rng.integers(len(frames[k])))
        frames[k][pos] ^= 0xFF
    else:
        frames = frames[: int(rng.integers(1, len(frames) + 1))]
    return [bytes(f) for f in frames]


def test_fuzzing_every_socket_crashes_nothing_and_executes_nothing(tmp_path, procs, curve):
    import zmq

    port = transport.free_port()
    learner = procs.start("embodied-learner", "learner", *learner_args(tmp_path, port))
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Boom(str(marker)))
    good = [bytes(f) for f in schema.pack_transitions(_fake_batch(), seq=0)]
    rng = np.random.default_rng(0)
    # 1) an authenticated but hostile client sends thousands of random / truncated frames to the learner
    fuzzer = transport.ActorSocket(f"tcp://127.0.0.1:{port}", "fuzzer", str(curve / "fuzzer.key_secret"),
                                   str(curve / "learner.key"))
    try:
        for i in range(3000):
            frames = [payload] if i % 100 == 0 else _fuzz_frames(rng, good, i)
            fuzzer.send(frames, block=True)
        # 2) raw bytes that are not even ZMTP
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(rng.bytes(int(rng.integers(1, 2000))))
        wait_for(lambda: stats(tmp_path / "learner").get("bad_messages", 0) >= 1500, 180, "fuzz handled", learner)
    finally:
        fuzzer.close()
    # the learner still serves a real actor afterwards
    a0 = procs.start("embodied-actor", "actor0", *actor_args(tmp_path, port, "actor0", 40))
    assert a0.wait(180) == 0
    a0_stats = json.loads((tmp_path / "actor0" / "actor_stats.json").read_text())
    assert a0_stats["transitions_submitted"] == 40 and a0_stats["link_pending"] == 0  # all acked
    assert learner.poll() is None
    assert "dropped a malformed message from fuzzer" in procs.log("learner")

    # 3) a fake learner (right key) answers a real actor with garbage
    fake_port = transport.free_port()
    fake = transport.LearnerSocket(f"tcp://127.0.0.1:{fake_port}", str(curve / "learner.key_secret"),
                                   str(curve / "allowed"))
    try:
        a1 = procs.start("embodied-actor", "actor1",
                         *actor_args(tmp_path, fake_port, "actor1", 0, "loop.hz=20", wait=1))
        peer, _, _ = wait_for(lambda: fake.recv(200), 120, "actor hello", a1)
        weights = schema.encode("weights", {"version": 5, "spec": {"kind": "gaussian_actor", "action_dim": 2}},
                                {"net.0.weight": np.zeros((3, 3), np.float32)})
        garbage = [[payload], [bytes(f) for f in weights]] + [_fuzz_frames(rng, good, i) for i in range(2000)]
        for frames in garbage:
            fake.send(peer, [zmq.Frame(f) for f in frames])
        time.sleep(3.0)
        assert a1.poll() is None  # still controlling the robot
        a1.send_signal(signal.SIGTERM)
        a1.wait(60)
    finally:
        fake.close()
    log = procs.log("actor1")
    assert "dropped a malformed message from the learner" in log and "rejected weights v5" in log
    assert not marker.exists()  # nothing received was ever unpickled or executed


def _fake_batch():
    from embodied.contracts import Transition

    obs = {"state": np.zeros(8, np.float32), "instruction": "x"}
    return [Transition(obs, np.zeros(2, np.float32), 0.0, obs, False, False, i == 0, 0, i) for i in range(4)]


@pytest.mark.slow
def test_sim_robot_actor_and_learner_learn_reach(tmp_path, procs, curve):
    """End to end over CURVE: the policy's own (deterministic, no human) success on the sim
    reach task reaches >= 0.8 over 10 evaluation episodes within 5000 robot steps
    (measured: 0.9-1.0 after ~3500 steps at 40 Hz)."""
    port = transport.free_port()
    learner = procs.start("embodied-learner", "learner",
                          *learner_args(tmp_path, port, "train.publish_every=25", starts=500, ckpt=600))
    actor = procs.start("embodied-actor", "actor0",
                        *actor_args(tmp_path, port, "actor0", 5000, "loop.hz=50", "loop.eval_every=3"))
    path = tmp_path / "actor0" / "actor_stats.json"

    def learned():
        try:
            s = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return s if s.get("eval_episodes", 0) >= 10 and s["eval_success_last10"] >= 0.8 else None

    end = time.monotonic() + 240
    result = None
    while time.monotonic() < end and result is None and actor.poll() is None:
        result = learned()
        time.sleep(1.0)
    result = result or learned()
    final = json.loads(path.read_text())
    assert result is not None, f"not learned: {final}"
    assert result["weights_version"] > 10 and result["steps"] <= 5000
    assert learner.poll() is None


def test_residual_rl_on_the_sim_robot_streams_only_residual_weights_over_a_local_base(tmp_path, procs, curve):
    """learner=residual over CURVE: the actor loads the base once from its own disk (acting
    with it alone until the first residual weights arrive), the learner streams residual
    weights only, and every transition - takeovers by the (scripted) human included - carries
    the base action, so interventions land in the demo half with their base actions."""
    import torch

    import policies
    from policies.bc import BCPolicy

    torch.manual_seed(0)
    base = tmp_path / "base"
    policies.save_policy(BCPolicy(2, 8, hidden=(16,), chunk=4), base)  # chunked, state-only, random weights
    port = transport.free_port()
    learner = procs.start("embodied-learner", "learner", *learner_args(
        tmp_path, port, "learner=residual", f"base_policy={base}", "learner.batch_size=16", "learner.hidden=[32,32]",
        "learner.actor_hidden=[16]", "learner.num_critics=4", "learner.critic_warmup=0", "learner.utd=2",
        "learner.actor_every=2", "train.n_step=3", "train.publish_every=10", starts=64, ckpt=1))
    actor = procs.start("embodied-actor", "actor0", *actor_args(
        tmp_path, port, "actor0", 1500, "loop.hz=50", f"base_policy={base}",
        "teleop={kind:scripted,every:2,start:0,stop:5}"))
    assert actor.wait(180) == 0, procs.log("actor0")[-3000:]
    final = json.loads((tmp_path / "actor0" / "actor_stats.json").read_text())
    assert final["steps"] == 1500 and final["weights_version"] > 0 and final["interventions"] > 0, final
    wait_for(lambda: (tmp_path / "learner" / "ckpt").exists() and stats(tmp_path / "learner").get("updates", 0) > 0,
             60, "learner updates", learner)
    time.sleep(2.5)  # one more full checkpoint with the last batches
    state = checkpoint.load(tmp_path / "learner" / "ckpt")
    online, offline = state["online"], state["offline"]
    assert "base_action" in online["extras"] and "base_action" in offline["extras"]
    n_off = len(offline["slots"]["episode_id"])
    assert n_off > 0 and np.abs(offline["extras"]["base_action"][:n_off]).sum() > 0  # takeovers with base actions
    weights = state["learner"]["policy"]
    assert not any(k.startswith("base") for k in weights), "the base never travels"
    assert learner.poll() is None


def test_a_sigterm_while_the_learner_starts_up_stops_it_cleanly(tmp_path, procs, curve):
    """It listens before loading torch and its checkpoint; a stop in that window is honoured once it is up."""
    port = transport.free_port()
    learner = procs.start("embodied-learner", "early", *learner_args(tmp_path, port))
    wait_for(lambda: "learner listening" in procs.log("early"), 120, "the socket bound", learner)
    learner.send_signal(signal.SIGTERM)  # still importing torch / building the learner
    assert learner.wait(120) == 0, procs.log("early")[-2000:]
    assert "stop requested during start-up" in procs.log("early") or "learner ready" in procs.log("early")
