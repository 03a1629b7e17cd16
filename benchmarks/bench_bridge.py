"""Actor -> learner bridge throughput vs LeRobot's gRPC transport, weight broadcast, loop jitter.

Transport (two 128x128 cameras + an 8-d state per transition, 16 transitions per message,
learner side in its own process, all on loopback, same run):

* **ours, CURVE** -- the real path: :class:`real_robot.bridge.link.ActorLink` (spool with
  fsync per batch, CURVE encryption, resend) -> :class:`real_robot.learner.LearnerServer`
  (decrypt, schema check, durable log fsync, dedup, replay add, ack). Timed until the
  actor holds an ack for every batch.
* **ours, plaintext loopback** -- the same with ``insecure_loopback=true``.
* **raw ZMQ ceiling** -- PUSH/PULL of the same pre-encoded frames, nothing else; and the
  same with CURVE on (the ceiling of any encrypted path: no spool, log, replay or acks).
* **LeRobot gRPC** -- LeRobot 0.6's own path: transitions as LeRobot builds them (float32
  CHW images in ``state`` and ``next_state``), ``transitions_to_bytes`` (torch.save),
  ``send_bytes_in_chunks`` over its ``LearnerService.SendTransitions`` stream into its
  ``LearnerService`` servicer, deserialised with ``bytes_to_transitions`` on the learner.
  Timed until the learner has deserialised every transition.

Weight broadcast: a 10 M-parameter ``GaussianActor`` published by the learner socket to
1 and 4 actor links (CURVE), timed until every actor has rebuilt the policy from its spec
and loaded the weights. Loop jitter: the actor loop on the sim reach robot with a
256x256 policy at 10 Hz and 50 Hz. Writes ``benchmarks/results/bridge.{json,md}``.

Every process of every path (ours, the raw ceilings, LeRobot's) runs with the allocator
settings the bridge's own processes use (:func:`real_robot.bridge.memory.keep_freed_buffers`),
so the ratios compare the transports, not glibc's defaults.

    python -m benchmarks.bench_bridge [--quick]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import queue
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 20.0
BATCH, IMG, STATE = 16, 128, 8
# train.replay_capacity of the learner under test and the size of the ingest ceiling's store: less
# than either run sends, so both are timed mostly after their store has wrapped, as a learner
# that has run a while is (a first write to fresh memory is a page fault per 4 kB, ~50 us each
# on this project's VM)
REPLAY = 800


def _transitions(n: int):
    from embodied.contracts import Transition

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (64, IMG, IMG, 3), np.uint8)

    def obs(i):
        return {"pixels": {"front": frames[i % 64], "wrist": frames[(i + 7) % 64]},
                "state": rng.normal(size=STATE).astype(np.float32), "instruction": "pick up the cube"}

    out, o = [], obs(0)
    for i in range(n):
        o2 = obs(i + 1)
        step = i % 50
        out.append(Transition(o, rng.uniform(-1, 1, 6).astype(np.float32), 0.0, o2, False, step == 49, step == 0,
                              i // 50, step))
        o = o2
    return out


def _learner_config(run_dir: str, port: int, keys_dir: str | None, fsync: str = "batch"):
    from hydra import compose, initialize_config_dir

    from embodied.cli import CONFIG_DIR

    over = [f"run_dir={run_dir}", f"bridge.bind=tcp://127.0.0.1:{port}", "spaces.cameras=[front,wrist]",
            f"spaces.image_size={IMG}", "spaces.action_dim=6", "train.learning_starts=100000000", f"train.replay_capacity={REPLAY}",
            "train.offline_capacity=16", "checkpoint.every_seconds=100000", "checkpoint.keep=1",
            f"bridge.log_fsync={fsync}"]
    if keys_dir:
        over += [f"bridge.secret_key={keys_dir}/learner.key_secret", f"bridge.allow_dir={keys_dir}/allowed"]
    else:
        over += ["bridge.insecure_loopback=true"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose("learner_server", overrides=over)


def _serve_ours(run_dir: str, port: int, keys_dir: str | None, fsync: str, ready, stop) -> None:
    import torch

    from real_robot.learner import LearnerServer

    torch.set_num_threads(1)
    server = LearnerServer(_learner_config(run_dir, port, keys_dir, fsync), run_dir)
    ready.set()
    while not stop.is_set():
        server._pump(20)
    server.sock.close()


def bench_ours(n: int, keys_dir: str | None, fsync: str = "batch") -> dict:
    from real_robot.bridge import schema
    from real_robot.bridge.link import ActorLink
    from real_robot.bridge.transport import free_port

    ctx = mp.get_context("spawn")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        ready, stop = ctx.Event(), ctx.Event()
        proc = ctx.Process(target=_serve_ours, args=(f"{tmp}/learner", port, keys_dir, fsync, ready, stop))
        proc.start()
        try:
            ready.wait(300)
            kw = (dict(secret_key=f"{keys_dir}/actor0.key_secret", server_key=f"{keys_dir}/learner.key")
                  if keys_dir else dict(insecure_loopback=True))
            link = ActorLink(f"tcp://127.0.0.1:{port}", "actor0", f"{tmp}/spool", fsync=fsync, resend_after=30,
                             window=1024, **kw).start()
            batches = [_transitions(BATCH * 4)[i:i + BATCH] for i in range(0, BATCH * 4, BATCH)]
            wire = sum(len(memoryview(f).cast("B")) for f in schema.pack_transitions(batches[0], 0))
            link.submit(batches[0])  # connect + warm up
            link.wait_acked(60)
            t0 = time.perf_counter()
            for i in range(n // BATCH):
                link.submit(batches[i % 4])
            ok = link.wait_acked(600)
            dt = time.perf_counter() - t0
            link.close()
            assert ok, "bridge benchmark: not every batch was acked"
        finally:
            stop.set()
            proc.join(30)
    sent = (n // BATCH) * BATCH
    return {"transitions_per_s": sent / dt, "MB_per_s": (n // BATCH) * wire / dt / 1e6,
            "wire_bytes_per_transition": wire / BATCH}


GROUP = 8  # messages per fsync in the durable ceiling (the actor link spools up to 8 batches per fsync)


def _write_group(f, messages: list) -> None:
    """Append messages to ``f`` and fsync: the least a durable path must do with each message."""
    for frames in messages:
        for frame in frames:
            f.write(memoryview(getattr(frame, "buffer", frame)).cast("B"))
    f.flush()
    os.fsync(f.fileno())


def _raw_sink(port: int, n_msgs: int, ready, done, server_keys: tuple[bytes, bytes] | None = None,
              durable: str | None = None, ingest: bool = False) -> None:
    import zmq

    from real_robot.bridge import schema
    from real_robot.bridge.memory import keep_freed_buffers

    keep_freed_buffers()
    sock = zmq.Context.instance().socket(zmq.PULL)
    if server_keys:
        sock.curve_publickey, sock.curve_secretkey = server_keys
        sock.curve_server = True
    sock.bind(f"tcp://127.0.0.1:{port}")
    ready.set()
    log = open(durable, "wb") if durable else None
    group, store, ptr = [], {}, 0
    for i in range(n_msgs):
        frames = sock.recv_multipart(copy=False)
        if ingest:  # one vectorised copy per array into a ring the size of the learner's replay
            arrays = schema.decode(frames).arrays
            for key, arr in arrays.items():
                if key not in store:
                    store[key] = np.zeros((REPLAY, *arr.shape[1:]), arr.dtype)
                rows = np.arange(ptr, ptr + len(arr)) % REPLAY
                store[key][rows] = arr
            ptr = (ptr + BATCH) % REPLAY
        if log is not None:
            group.append(frames)
            if len(group) == GROUP or i == n_msgs - 1:
                _write_group(log, group)
                group = []
    done.set()


def bench_raw_zmq(n: int, curve: bool = False, durable: bool = False, ingest: bool = False) -> dict:
    """Bare PUSH/PULL of the bridge's messages; ``durable``: both sides also append every message
    to a file on this disk and fsync once per 8 messages (the sender before sending them), the
    bare ceiling of any path that keeps each message on disk at both ends; ``ingest``: the
    receiver also copies every array into a ring store as large as the learner's replay (one
    vectorised copy per array: the least a learner that keeps the data must do)."""
    import zmq

    from real_robot.bridge import schema
    from real_robot.bridge.transport import free_port

    frames = schema.pack_transitions(_transitions(BATCH), 0)
    wire = sum(len(memoryview(f).cast("B")) for f in frames)
    msgs = n // BATCH
    ctx = mp.get_context("spawn")
    port = free_port()
    ready, done = ctx.Event(), ctx.Event()
    server = zmq.curve_keypair() if curve else None
    tmp = tempfile.mkdtemp()
    proc = ctx.Process(target=_raw_sink, args=(port, msgs + 1, ready, done, server,
                                               f"{tmp}/sink.log" if durable else None, ingest))
    proc.start()
    ready.wait(120)
    spool = open(f"{tmp}/source.log", "wb") if durable else None
    sock = zmq.Context.instance().socket(zmq.PUSH)
    if curve:
        sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
        sock.curve_serverkey = server[0]
    sock.connect(f"tcp://127.0.0.1:{port}")
    sock.send_multipart(frames)
    time.sleep(0.2)
    t0 = time.perf_counter()
    for start in range(0, msgs, GROUP):
        group = min(GROUP, msgs - start)
        if spool is not None:
            _write_group(spool, [frames] * group)
        for _ in range(group):
            sock.send_multipart(frames, copy=False)
    done.wait(600)
    dt = time.perf_counter() - t0
    sock.close(0)
    proc.join(30)
    shutil.rmtree(tmp, ignore_errors=True)
    return {"transitions_per_s": msgs * BATCH / dt, "MB_per_s": msgs * wire / dt / 1e6}


def _lerobot_transitions(n: int) -> list:
    import torch

    out = []
    for t in _transitions(n):
        def state(o):
            return {"observation.images.front": torch.from_numpy(o["pixels"]["front"]).permute(2, 0, 1)[None].float() / 255,
                    "observation.images.wrist": torch.from_numpy(o["pixels"]["wrist"]).permute(2, 0, 1)[None].float() / 255,
                    "observation.state": torch.from_numpy(o["state"])[None]}

        out.append({"state": state(t.obs), "action": torch.from_numpy(t.action)[None], "reward": float(t.reward),
                    "next_state": state(t.next_obs), "done": t.terminated, "truncated": t.truncated,
                    "complementary_info": {"discrete_penalty": 0.0}})
    return out


def _lerobot_learner(port: int, n: int, ready, done) -> None:
    from concurrent.futures import ThreadPoolExecutor
    from queue import Queue

    import grpc
    import torch
    from lerobot.rl.learner_service import LearnerService
    from lerobot.transport import services_pb2_grpc
    from lerobot.transport.utils import MAX_MESSAGE_SIZE, bytes_to_transitions

    from real_robot.bridge.memory import keep_freed_buffers

    keep_freed_buffers()
    torch.set_num_threads(1)
    shutdown = threading.Event()
    transitions: Queue = Queue()
    service = LearnerService(shutdown, Queue(), 1e9, transitions, Queue(), 0.001)
    server = grpc.server(ThreadPoolExecutor(max_workers=4), options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE), ("grpc.max_send_message_length", MAX_MESSAGE_SIZE)])
    services_pb2_grpc.add_LearnerServiceServicer_to_server(service, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    ready.set()
    got = 0
    while got < n:
        got += len(bytes_to_transitions(transitions.get()))
    done.set()
    shutdown.set()
    server.stop(1)


def bench_lerobot(n: int) -> dict:
    import grpc
    from lerobot.transport import services_pb2_grpc
    from lerobot.transport.utils import grpc_channel_options, transitions_to_bytes

    from lerobot.rl.actor import transitions_stream
    from real_robot.bridge.transport import free_port

    msgs = n // BATCH
    batch = _lerobot_transitions(BATCH)
    ctx = mp.get_context("spawn")
    port = free_port()
    ready, done = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_lerobot_learner, args=(port, (msgs + 1) * BATCH, ready, done))
    proc.start()
    ready.wait(300)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", grpc_channel_options())
    stub = services_pb2_grpc.LearnerServiceStub(channel)
    out: queue.Queue = queue.Queue()
    shutdown = threading.Event()
    def send():
        try:
            stub.SendTransitions(transitions_stream(shutdown, out, 0.01))
        except grpc.RpcError:  # the channel closes when the benchmark ends
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    first = transitions_to_bytes(batch)
    out.put(first)  # warm up the stream
    time.sleep(1.0)
    t0 = time.perf_counter()
    for _ in range(msgs):
        out.put(transitions_to_bytes(batch))  # the actor serialises each message, as LeRobot's does
    done.wait(900)
    dt = time.perf_counter() - t0
    shutdown.set()
    channel.close()
    proc.join(30)
    return {"transitions_per_s": msgs * BATCH / dt, "MB_per_s": msgs * len(first) / dt / 1e6,
            "wire_bytes_per_transition": len(first) / BATCH}


def bench_broadcast(n_actors: int, keys_dir: str, repeats: int) -> tuple[float, int]:
    """Median seconds from publish until every actor runs the new 10 M-parameter policy."""
    from policies.actor import GaussianActor
    from real_robot.actor import build_policy
    from real_robot.bridge import schema
    from real_robot.bridge.link import ActorLink
    from real_robot.bridge.transport import LearnerSocket, free_port

    policy = GaussianActor(action_dim=6, state_dim=STATE, hidden=(2236, 2236, 2236))
    params = sum(p.numel() for p in policy.parameters())
    arrays = {k: v.numpy() for k, v in policy.state_dict().items()}
    port = free_port()
    server = LearnerSocket(f"tcp://127.0.0.1:{port}", f"{keys_dir}/learner.key_secret", f"{keys_dir}/allowed")
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        links = [ActorLink(f"tcp://127.0.0.1:{port}", f"actor{i}", f"{tmp}/s{i}",
                           secret_key=f"{keys_dir}/actor{i}.key_secret", server_key=f"{keys_dir}/learner.key",
                           build_policy=build_policy).start() for i in range(n_actors)]
        peers: set[bytes] = set()
        while len(peers) < n_actors:
            item = server.recv(100)
            if item:
                peers.add(item[0])
        for version in range(1, repeats + 1):
            frames = schema.encode("weights", {"version": version, "spec": policy.spec()}, arrays)
            t0 = time.perf_counter()
            for peer in peers:
                server.send(peer, frames)
            while not all(link.weights_version == version for link in links):
                server.recv(1)  # drain heartbeats
            times.append(time.perf_counter() - t0)
        for link in links:
            link.close()
    server.close()
    return float(np.median(times)), params


def bench_jitter(hz: float, steps: int) -> dict:
    from policies.actor import GaussianActor
    from real_robot.actor import Actor, LoopConfig
    from real_robot.robots import RobotEnv, SimRobot

    env = RobotEnv(SimRobot("reach", seed=0), max_episode_steps=10**9)
    policy = GaussianActor(action_dim=2, state_dim=8, hidden=(256, 256)).eval()
    actor = Actor(env, policy=policy, cfg=LoopConfig(hz=hz, max_steps=steps, mode="none"))
    stats = actor.run()
    env.close()
    return {k: stats[k] for k in ("jitter_ms_p50", "jitter_ms_p99", "policy_latency_ms_p50", "policy_latency_ms_p99",
                                  "overruns")}


def _previous(path: Path) -> list[str]:
    """The transport figures of the run this one replaces (for a before/after line)."""
    try:
        p = json.loads(path.read_text())
        rates = [p[k]["transitions_per_s"] for k in ("lerobot_grpc", "ours_curve", "ours_curve_fsync_interval",
                                                      "ours_plaintext")]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    le, cu, ci, pl = rates
    return ["", f"Previous run: LeRobot {le:.0f}; CURVE fsync per batch {cu:.0f} ({cu / le:.1f}x); CURVE fsync "
                f"once a second {ci:.0f} ({ci / le:.1f}x); plaintext {pl:.0f} ({pl / le:.1f}x) transitions/s."]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    import torch

    from real_robot.bridge import keys
    from real_robot.bridge.memory import keep_freed_buffers

    keep_freed_buffers()
    torch.set_num_threads(1)
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    n = 1600 if args.quick else 6400
    with tempfile.TemporaryDirectory() as kdir:
        keys.create(kdir, "learner")
        for i in range(4):
            keys.create(f"{kdir}/allowed", f"actor{i}")
            os.replace(f"{kdir}/allowed/actor{i}.key_secret", f"{kdir}/actor{i}.key_secret")
        t0 = time.time()
        lerobot = bench_lerobot(n // 4 if args.quick else n // 2)
        print(f"lerobot gRPC: {lerobot} ({time.time() - t0:.0f} s)", flush=True)
        curve = bench_ours(n, kdir)
        print(f"ours CURVE: {curve}", flush=True)
        curve_interval = bench_ours(n, kdir, fsync="interval")
        print(f"ours CURVE, fsync every second: {curve_interval}", flush=True)
        plain = bench_ours(n, None)
        raw = bench_raw_zmq(n)
        raw_curve = bench_raw_zmq(n, curve=True)
        raw_durable = bench_raw_zmq(n, durable=True)
        raw_curve_durable = bench_raw_zmq(n, curve=True, durable=True)
        raw_ingest = bench_raw_zmq(n, durable=True, ingest=True)
        raw_curve_ingest = bench_raw_zmq(n, curve=True, durable=True, ingest=True)
        print(f"ours plaintext: {plain}, raw ZMQ: {raw}, raw ZMQ CURVE: {raw_curve}, durable: {raw_durable}, "
              f"durable CURVE: {raw_curve_durable}, durable + ingest: {raw_ingest}, CURVE: {raw_curve_ingest}",
              flush=True)
        reps = 2 if args.quick else 5
        b1, params = bench_broadcast(1, kdir, reps)
        b4, _ = bench_broadcast(4, kdir, reps)
    jitter = {f"{hz}Hz": bench_jitter(hz, int(hz * (5 if args.quick else 20))) for hz in (10, 50)}
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "setup": f"{BATCH} transitions/message, two {IMG}x{IMG} cameras + {STATE}-d state, loopback",
        "lerobot_grpc": lerobot, "ours_curve": curve, "ours_curve_fsync_interval": curve_interval, "ours_plaintext": plain, "raw_zmq": raw,
        "raw_zmq_curve": raw_curve, "raw_zmq_durable": raw_durable, "raw_zmq_curve_durable": raw_curve_durable,
        "raw_zmq_durable_ingest": raw_ingest, "raw_zmq_curve_durable_ingest": raw_curve_ingest,
        "plaintext_fraction_of_learner_ceiling": plain["transitions_per_s"] / raw_ingest["transitions_per_s"],
        "curve_fraction_of_learner_ceiling": curve["transitions_per_s"] / raw_curve_ingest["transitions_per_s"],
        "plaintext_fraction_of_durable_raw": plain["transitions_per_s"] / raw_durable["transitions_per_s"],
        "curve_fraction_of_durable_raw_curve": curve["transitions_per_s"] / raw_curve_durable["transitions_per_s"],
        "ratio_curve_vs_lerobot": curve["transitions_per_s"] / lerobot["transitions_per_s"],
        "ratio_curve_fsync_interval_vs_lerobot": curve_interval["transitions_per_s"] / lerobot["transitions_per_s"],
        "plaintext_fraction_of_raw_zmq": plain["transitions_per_s"] / raw["transitions_per_s"],
        "curve_fraction_of_raw_curve": curve["transitions_per_s"] / raw_curve["transitions_per_s"],
        "raw_curve_vs_lerobot": raw_curve["transitions_per_s"] / lerobot["transitions_per_s"],
        "target_ratio": TARGET,
        "broadcast_params": params, "broadcast_s_1_actor": b1, "broadcast_s_4_actors": b4,
        "jitter": jitter, "quick": args.quick,
    }
    RESULTS.mkdir(exist_ok=True)
    before = _previous(RESULTS / "bridge.json")
    (RESULTS / "bridge.json").write_text(json.dumps(result, indent=2))
    rows = [
        "## Bridge: actor -> learner transport, weight broadcast, control-loop jitter",
        "",
        f"{result['setup']}; {result['machine']}{' (quick)' if args.quick else ''}.",
        "",
        "| path | transitions/s | MB/s | bytes/transition |",
        "|---|---:|---:|---:|",
        f"| LeRobot gRPC (torch.save, 2 MB chunks, float32 images) | {lerobot['transitions_per_s']:.0f} | "
        f"{lerobot['MB_per_s']:.1f} | {lerobot['wire_bytes_per_transition']:.0f} |",
        f"| ours, CURVE + acks + spool fsync + learner log fsync | {curve['transitions_per_s']:.0f} | "
        f"{curve['MB_per_s']:.1f} | {curve['wire_bytes_per_transition']:.0f} |",
        f"| ours, CURVE, spool + log fsync at most once a second | {curve_interval['transitions_per_s']:.0f} | "
        f"{curve_interval['MB_per_s']:.1f} | |",
        f"| ours, plaintext loopback (fsync per batch) | {plain['transitions_per_s']:.0f} | {plain['MB_per_s']:.1f} | |",
        f"| raw ZMQ PUSH/PULL ceiling | {raw['transitions_per_s']:.0f} | {raw['MB_per_s']:.1f} | |",
        f"| raw ZMQ PUSH/PULL with CURVE (encryption ceiling) | {raw_curve['transitions_per_s']:.0f} | "
        f"{raw_curve['MB_per_s']:.1f} | |",
        f"| raw ZMQ PUSH/PULL, both ends write + fsync per 8 messages (durable ceiling) | "
        f"{raw_durable['transitions_per_s']:.0f} | {raw_durable['MB_per_s']:.1f} | |",
        f"| raw ZMQ PUSH/PULL with CURVE, durable as above | {raw_curve_durable['transitions_per_s']:.0f} | "
        f"{raw_curve_durable['MB_per_s']:.1f} | |",
        f"| durable ceiling + the receiver copies every array into a replay-sized ring (learner ceiling) | "
        f"{raw_ingest['transitions_per_s']:.0f} | {raw_ingest['MB_per_s']:.1f} | |",
        f"| the same with CURVE | {raw_curve_ingest['transitions_per_s']:.0f} | {raw_curve_ingest['MB_per_s']:.1f} | |",
        "",
        f"**ours (CURVE) / LeRobot: {result['ratio_curve_vs_lerobot']:.1f}x** (fsync once a second: "
        f"{result['ratio_curve_fsync_interval_vs_lerobot']:.1f}x; target >= {TARGET:.0f}x); "
        f"plaintext = {100 * result['plaintext_fraction_of_raw_zmq']:.0f} % of the raw ZMQ ceiling; "
        f"CURVE = {100 * result['curve_fraction_of_raw_curve']:.0f} % of the raw CURVE ceiling, which itself is "
        f"{result['raw_curve_vs_lerobot']:.1f}x LeRobot. Against the durable ceilings (the same disk writes and "
        f"fsyncs, no bridge): plaintext {result['plaintext_fraction_of_durable_raw']:.2f}x, "
        f"CURVE {result['curve_fraction_of_durable_raw_curve']:.2f}x; against the learner ceilings (durable + "
        f"the copy into a replay): plaintext {result['plaintext_fraction_of_learner_ceiling']:.2f}x, "
        f"CURVE {result['curve_fraction_of_learner_ceiling']:.2f}x.",
        *before,
        "",
        f"Weight broadcast of a {params / 1e6:.1f} M-parameter policy (CURVE, rebuild + load on each actor): "
        f"1 actor {b1 * 1e3:.0f} ms, 4 actors {b4 * 1e3:.0f} ms (median).",
        "",
        "| control rate | jitter p50 (ms) | jitter p99 (ms) | policy p50 (ms) | policy p99 (ms) | overruns |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for hz, j in jitter.items():
        rows.append(f"| {hz} | {j['jitter_ms_p50']:.2f} | {j['jitter_ms_p99']:.2f} | {j['policy_latency_ms_p50']:.2f} "
                    f"| {j['policy_latency_ms_p99']:.2f} | {j['overruns']} |")
    (RESULTS / "bridge.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))
    return result


if __name__ == "__main__":
    main()
