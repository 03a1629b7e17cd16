"""Remote policy inference: a policy server process (real ZMQ sockets, CURVE) answers the sim
robot's observations with action chunks; the actor loop plays them step-aligned while the
next chunk is computed, and the watchdog holds the arm when none comes.

The slow server serves :class:`StepClock`, a test policy whose chunk says which chunk
position each action is (``action[0]``) and which observation it was computed from
(``action[1]``, a fingerprint of the state), so the step an executed action was meant for
is checked exactly. Run as a script, this file is that server: the real server command
with :class:`StepClock` registered.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_bridge_processes import wait_for

from real_robot.bridge import keys, transport

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa", "WANDB_MODE": "offline",
       "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
K, SLEEP, HZ = 20, 0.15, 25  # chunk, seconds per inference, control rate: ~4 steps of latency
PREFETCH = 14  # ask when 14 actions are left: ~10 steps (0.4 s) to spare when the reply comes


def code(j):
    """Chunk position j -> action[0] (small actions keep the gripper inside the workspace)."""
    return (np.asarray(j, np.float64) / (K - 1) - 0.5) * 0.5


def position(a0: float) -> int:
    return int(round((float(a0) / 0.5 + 0.5) * (K - 1)))


def fingerprint(state) -> np.ndarray:
    """(..., D) states -> (...,) action[1]: a different value for every observation."""
    return (0.25 * np.sin(1e3 * np.asarray(state, np.float64).sum(-1))).astype(np.float32)


class StepClock:
    """Test policy: ``chunk[j] = [code(j), fingerprint(state)]``, ``sleep`` seconds per call."""

    kind = "step_clock"

    def __init__(self, action_dim: int = 2, state_dim: int = 8, chunk: int = K, sleep: float = SLEEP):
        self.action_dim, self.state_dim, self.chunk_size, self.sleep = action_dim, state_dim, chunk, sleep

    def spec(self) -> dict:
        return {"kind": self.kind, "action_dim": self.action_dim, "state_dim": self.state_dim,
                "chunk": self.chunk_size, "sleep": self.sleep}

    def io(self) -> dict:
        return {"action_dim": self.action_dim, "state_dim": self.state_dim, "cameras": {}}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state) -> None:
        pass

    def act(self, obs, deterministic: bool = False) -> np.ndarray:
        time.sleep(self.sleep)
        fp = fingerprint(obs["state"])
        out = np.empty((len(fp), self.chunk_size, self.action_dim), np.float32)
        out[:, :, 0] = code(np.arange(self.chunk_size))
        out[:, :, 1] = fp[:, None]
        return out


class Recorder:
    """Where the learner would be: keeps every transition with the time it was handed over
    (``loop.batch=1``: right after its step)."""

    stats: dict = {}
    weights_version, pending, policy = -1, {}, None

    def __init__(self):
        self.rows: list = []

    def submit(self, batch) -> None:
        now = time.monotonic()
        self.rows += [(now, t) for t in batch]


def start(root: Path, name: str, cmd: list[str]) -> subprocess.Popen:
    out = open(root / f"{name}.log", "ab")
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=ENV, cwd=root)


def log_of(root: Path, name: str) -> str:
    return (root / f"{name}.log").read_text(errors="replace")


def make_keys(root: Path) -> Path:
    k = root / "keys"
    keys.create(k, "server")
    keys.create(k / "allowed", "actor0")
    (k / "allowed" / "actor0.key_secret").rename(k / "actor0.key_secret")
    keys.create(k, "intruder")
    return k


def server_args(root: Path, k: Path, port: int, policy: Path, *extra: str) -> list[str]:
    return [f"policy={policy}", f"bridge.bind=tcp://127.0.0.1:{port}", f"bridge.secret_key={k / 'server.key_secret'}",
            f"bridge.allow_dir={k / 'allowed'}", f"run_dir={root / 'server'}", *extra]


def client(k: Path, port: int, name: str = "actor0", **kw):
    from real_robot.remote_policy import RemotePolicy

    return RemotePolicy(f"tcp://127.0.0.1:{port}", name, str(k / f"{name}.key_secret"), str(k / "server.key"), **kw)


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    import policies

    root = tmp_path_factory.mktemp("slow_server")
    k = make_keys(root)
    policies.save_policy(StepClock(), root / "clock")
    port = transport.free_port()
    proc = start(root, "server", [sys.executable, __file__, *server_args(root, k, port, root / "clock")])
    try:
        wait_for(lambda: "policy server ready" in log_of(root, "server"), 60, "the policy server", proc)
        yield proc, port, k
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(10)


def run_actor(env, remote, watchdog, **loop):
    from real_robot.actor import Actor, LoopConfig

    rec = Recorder()
    actor = Actor(env, rec, None, watchdog=watchdog, remote=remote,
                  cfg=LoopConfig(hz=HZ, batch=1, mode="none", **loop))
    return actor, rec


def check_alignment(rows) -> list[tuple[int, int, int]]:
    """Every executed action is position j of the chunk computed from the observation of step
    t - j of the same episode (t: the step it was executed at); -> (t, j, s) per step."""
    state = {(t.episode_id, t.step): t.obs["state"] for _, t in rows}
    out = []
    for _, t in rows:
        j = position(t.action[0])
        s = t.step - j
        assert 0 <= j < K and s >= 0, (t.episode_id, t.step, j)
        assert t.action[0] == pytest.approx(code(j), abs=1e-6)
        assert t.action[1] == pytest.approx(fingerprint(state[(t.episode_id, s)]), abs=1e-5), (t.step, j)
        out.append((t.step, j, s))
    return out


def test_a_slow_server_never_stalls_the_control_loop_and_chunks_play_step_aligned(slow_server):
    from real_robot.robots import make_robot_env
    from real_robot.safety import Watchdog

    _, port, k = slow_server
    env = make_robot_env({"kind": "sim", "task": "reach", "max_episode_steps": 75}, seed=0)
    remote = client(k, port, prefetch=PREFETCH, reply_timeout=2.0)
    watchdog = Watchdog(env, deadline=0.5, period=0.02).start()
    try:
        remote.connect(30)
        remote.check_fits(env.observation_space, env.action_space)
        actor, rec = run_actor(env, remote, watchdog, max_steps=150)
        t0 = time.monotonic()
        stats = actor.run()
        wall = time.monotonic() - t0
    finally:
        watchdog.stop()
        remote.close()
        env.close()
    steps, stalls = stats["steps"], stats["policy_stalls"]
    print(f"\n{steps} steps in {wall:.2f} s ({wall * HZ:.0f} periods): {stalls} ticks waiting for an episode's "
          f"first chunk, {stats['remote_starved']} starved, {stats['ticks_skipped']} periods skipped by overruns, "
          f"{stats['remote_chunks']} chunks, rtt p50 {stats['remote_rtt_ms_p50']:.0f} ms "
          f"p99 {stats['remote_rtt_ms_p99']:.0f} ms (prefetch covers {1e3 * PREFETCH / HZ:.0f} ms), "
          f"{stats['remote_acted_while_waiting']} steps acted while a chunk was computed")
    assert steps == 150 and stats["episodes"] == 2
    assert stalls == stats["remote_first_chunk_waits"] + stats["remote_starved"]
    assert stats["remote_first_chunk_waits"] <= 2 * HZ  # each episode waits for its first chunk, once
    # inside an episode the queue never ran dry, unless a reply came later than the prefetch margin
    assert stats["remote_starved"] == 0 or stats["remote_rtt_ms_p99"] > 1e3 * PREFETCH / HZ
    assert stats["remote_acted_while_waiting"] >= 0.5 * steps  # the loop stepped on while chunks were computed
    ticks = steps + stalls + stats["ticks_skipped"]  # periods the loop itself overran (a loaded CPU) included
    assert 0.9 * wall * HZ - 3 <= ticks <= wall * HZ + 2  # a tick per period: steps + waits ~ duration / period
    assert stats["remote_chunks"] >= 150 / (K - PREFETCH) / 2 and stats["remote_dropped_actions"] > 0

    aligned = check_alignment(rec.rows)
    by_episode: dict[int, list] = {}
    for (now, t), (_, j, s) in zip(rec.rows, aligned):
        by_episode.setdefault(t.episode_id, []).append((now, j, s))
    intervals = []
    for episode in by_episode.values():
        assert episode[0][1] == 0  # an episode starts with the first action of its own first chunk
        sources = [s for _, _, s in episode]
        assert sources == sorted(sources)  # a newer chunk replaces the older one, never the reverse
        assert max(j for _, j, _ in episode) >= K - PREFETCH  # actions came from deep inside chunks ...
        assert len(set(sources)) >= 5  # ... of several chunks computed while the robot moved
        intervals += np.diff([now for now, _, _ in episode]).tolist()
    print(f"step intervals inside episodes: median {1e3 * np.median(intervals):.1f} ms, "
          f"p90 {1e3 * np.percentile(intervals, 90):.1f} ms, p99 {1e3 * np.percentile(intervals, 99):.1f} ms, "
          f"max {1e3 * max(intervals):.1f} ms")
    assert np.median(intervals) == pytest.approx(1 / HZ, rel=0.2)
    assert np.percentile(intervals, 90) < 2 / HZ  # bounded: the loop's own rate, not the server's


def test_a_server_that_stops_answering_gets_the_arm_held_and_nothing_stale_played(slow_server):
    from real_robot.robots import make_robot_env
    from real_robot.safety import Watchdog

    proc, port, k = slow_server
    env = make_robot_env({"kind": "sim", "task": "reach", "max_episode_steps": 100_000}, seed=1)
    holds: list[float] = []
    hold = env.hold
    env.hold = lambda: (holds.append(time.monotonic()), hold())  # the real hold, its times noted
    remote = client(k, port, prefetch=PREFETCH, reply_timeout=1.0)
    watchdog = Watchdog(env, deadline=0.5, period=0.02).start()
    actor = None
    try:
        remote.connect(30)
        actor, rec = run_actor(env, remote, watchdog)
        thread = threading.Thread(target=actor.run, daemon=True)
        thread.start()
        wait_for(lambda: len(rec.rows) >= 40, 30, "40 steps")
        proc.send_signal(signal.SIGSTOP)  # a hung server: connected, silent
        stopped = time.monotonic()
        wait_for(lambda: watchdog.holds >= 10, 20, "the watchdog holding the arm")
        frozen, timeouts = len(rec.rows), remote.counts["timeouts"]
        # a request older than reply_timeout is abandoned: what is in flight now is of the current observation
        wait_for(lambda: remote.counts["timeouts"] > timeouts, 20, "the request before the dry spell abandoned")
        time.sleep(0.3)
        assert len(rec.rows) == frozen  # no step while nothing came: no action invented, none replayed
        proc.send_signal(signal.SIGCONT)
        wait_for(lambda: len(rec.rows) >= frozen + 40, 20, "acting again after the server resumed")
    finally:
        ended = time.monotonic()
        proc.send_signal(signal.SIGCONT)
        if actor is not None:
            actor.stop()
            thread.join(10)
        watchdog.stop()
        remote.close()
        env.close()
    stats = actor.stats()
    assert watchdog.trips >= 1 and stats["watchdog_holds"] >= 10 and stats["remote_starved"] > 0
    assert stats["remote_timeouts"] >= 1
    times = [now for now, _ in rec.rows]
    gaps = [i for i in range(1, len(times)) if times[i] - times[i - 1] > watchdog.deadline]
    assert len(gaps) == 1, gaps  # one dry spell: while the server was stopped
    gap = gaps[0]
    after_stop = sum(1 for now in times if stopped < now <= times[gap - 1])
    assert after_stop <= K  # once stopped, only what the current chunk still held was played
    assert all(times[gap - 1] < h < times[gap] for h in holds if h < ended)  # held only while no chunk was there
    aligned = check_alignment(rec.rows)
    t, j, s = aligned[gap]
    assert rec.rows[gap][1].step == rec.rows[gap - 1][1].step + 1  # the step index did not move while held
    assert j == 0 and s == t  # resumed with a fresh chunk of the current observation, not a stale one


def actor_cfg(*overrides):
    from hydra import compose, initialize_config_dir

    from embodied.cli import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose("actor", overrides=list(overrides))


def test_a_saved_native_vla_is_served_and_drives_the_sim_robot_end_to_end(tmp_path, capsys):
    import policies
    from policies.vla.native import NativeVLA
    from real_robot.cli import run_actor
    from real_robot.robots import make_robot_env

    k = make_keys(tmp_path)
    vla = NativeVLA(2, 8, {"front": (32, 32, 3)}, bins=32, chunk=8, text="learned", text_dim=16, text_buckets=64,
                    feature_dim=16, channels=8, hidden=(32,), value_hidden=(16,))
    policies.save_policy(vla, tmp_path / "vla")
    port = transport.free_port()
    server = start(tmp_path, "server", [str(BIN / "python"), "-m", "real_robot.remote_policy",
                                        *server_args(tmp_path, k, port, tmp_path / "vla", "device=auto")])
    actor_args = [f"policy=remote:127.0.0.1:{port}", "connect=null", f"remote.server_key={k / 'server.key'}",
                  f"curve.secret={k / 'actor0.key_secret'}", "remote.connect_timeout=60", "loop.mode=none",
                  "loop.deterministic=true"]
    try:
        wait_for(lambda: "policy server ready" in log_of(tmp_path, "server"), 90, "the policy server", server)
        # the robot lacks the policy's camera: the actor command stops with one line, the robot untouched
        with pytest.raises(SystemExit) as exit_:
            run_actor(actor_cfg(*actor_args, f"run_dir={tmp_path / 'blind'}", "robot=sim_reach", "loop.max_steps=5"))
        assert exit_.value.code == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"error: the policy at remote:127.0.0.1:{port} reads camera 'front', this robot has no cameras "
            "(robot.cameras, or robot.pixels=true on the sim robot)"]
        assert not (tmp_path / "blind" / "actor_stats.json").exists()

        # what comes back is exactly the saved VLA's (deterministic) chunk for the robot's observation
        env = make_robot_env({"kind": "sim", "task": "reach", "pixels": True, "image_size": 32}, seed=0)
        remote = client(k, port, prefetch=0)
        try:
            remote.connect(30)
            remote.check_fits(env.observation_space, env.action_space)
            obs, _ = env.reset(seed=3)
            first = wait_for(lambda: (a := remote.next_action(obs, 0, deterministic=True)) is not None and [a], 20,
                             "the first chunk")
            served = np.stack(first + [remote.next_action(obs, i, deterministic=True) for i in range(1, 8)])
        finally:
            remote.close()
            env.close()
        batch = {"pixels": {"front": obs["pixels"]["front"][None]}, "state": obs["state"][None],
                 "instruction": [obs["instruction"]]}
        local = policies.load_policy(tmp_path / "vla").act(batch, deterministic=True)[0]
        np.testing.assert_array_equal(served, local)

        # the actor command on the sim robot with cameras: acts with the served chunks, no learner
        run = start(tmp_path, "actor", [str(BIN / "embodied-actor"), *actor_args, f"run_dir={tmp_path / 'actor'}",
                                        "robot=sim_reach_pixels", "robot.image_size=32", "loop.hz=20",
                                        "loop.max_steps=60"])
        assert run.wait(120) == 0, log_of(tmp_path, "actor")[-2000:]
    finally:
        for p in (server,):
            p.kill()
            p.wait(10)
    stats = json.loads((tmp_path / "actor" / "actor_stats.json").read_text())
    assert stats["steps"] == 60 and stats["episodes"] == 1 and stats["remote_errors"] == 0
    assert stats["remote_chunks"] >= 60 / 8 and stats["remote_starved"] <= 5
    assert stats["policy_stalls"] == stats["remote_first_chunk_waits"] + stats["remote_starved"]
    assert "Traceback" not in log_of(tmp_path, "actor") + log_of(tmp_path, "server")


def test_bad_input_is_one_line_before_anything_starts(tmp_path, slow_server):
    from hydra import compose, initialize_config_dir

    from embodied.cli import CONFIG_DIR
    from real_robot.remote_policy import parse_remote
    from real_robot.schemas import check_actor_config, check_policy_server_config

    for bad in ("remote:gpu-box", "remote:gpu-box:http", "remote::5560", "gpu-box:5560", "remote:tcp://h/x:1"):
        with pytest.raises(ValueError, match="remote:<host>:<port>"):
            check_actor_config(actor_cfg(f"policy={bad}"))
    check_actor_config(actor_cfg())  # the learner's weights, as before
    check_actor_config(actor_cfg("policy=remote:gpu-box:5560", "connect=null"))
    check_actor_config(actor_cfg("policy=remote:tcp://10.0.0.5:5560"))  # and still streaming to the learner
    assert parse_remote("remote:[::1]:5560") == "tcp://[::1]:5560"
    with pytest.raises(ValueError, match="connect=null runs the actor without a learner"):
        check_actor_config(actor_cfg("connect=null"))
    with pytest.raises(ValueError, match="base_policy= .residual RL. needs the learner's weights"):
        check_actor_config(actor_cfg("policy=remote:h:1", f"base_policy={tmp_path}"))
    with pytest.raises(ValueError, match="remote.prefetch must be >= 0"):
        check_actor_config(actor_cfg("policy=remote:h:1", "remote.prefetch=-1"))
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        server_cfg = compose("policy_server", overrides=[f"policy={tmp_path / 'nothing'}"])
    with pytest.raises(FileNotFoundError, match=f"policy={tmp_path / 'nothing'} does not exist"):
        check_policy_server_config(server_cfg)

    _, port, k = slow_server
    silent = client(k, transport.free_port())  # nobody listens there
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=r"did not answer within 0.5 s"):
        silent.connect(0.5)
    assert time.monotonic() - t0 < 3
    silent.close()
    intruder = client(k, port, name="intruder")  # a key the server's allow-list lacks
    with pytest.raises(PermissionError, match="rejected this actor's CURVE key"):
        intruder.connect(10)
    intruder.close()


if __name__ == "__main__":  # the policy server with StepClock registered: the real server command
    import policies

    policies.register("step_clock", "__main__:StepClock")
    from real_robot.cli import policy_server_main

    policy_server_main()
