"""Hydra apps of the real-robot loop: ``embodied-learner``, ``embodied-actor``, ``embodied-keygen``
and the policy server (``python -m real_robot.remote_policy``).

    embodied-keygen name=learner && embodied-keygen name=actor0 out=keys/allowed
    embodied-learner                       # configs/learner_server.yaml
    embodied-actor robot=sim_reach         # configs/actor.yaml (+ configs/robot/*.yaml)
    python -m real_robot.remote_policy policy=<folder>   # configs/policy_server.yaml
    embodied-actor policy=remote:<host>:<port> connect=null   # act with the server's chunks, no learner
"""

from __future__ import annotations

import json
import logging
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from embodied.cli import CONFIG_DIR, one_line_errors, setup_runtime

setup_runtime()
log = logging.getLogger("real_robot")


def _logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def make_human(cfg: Any):
    """``teleop`` config -> a human input device (or None)."""
    if cfg is None:
        return None
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    kind = cfg.pop("kind", "lerobot")
    if kind == "scripted":
        from real_robot.teleop import ScriptedHuman, reach_controller

        controllers = {"reach": reach_controller}
        name = cfg.pop("controller", "reach")
        if name not in controllers:
            raise ValueError(f"teleop.controller {name!r} unknown; one of {sorted(controllers)}")
        return ScriptedHuman(controllers[name], **cfg)
    if kind == "spacemouse":
        from real_robot.teleop import SpaceMouseTeleop

        human = SpaceMouseTeleop(**cfg)
        human.connect()
        return human
    if kind == "lerobot":
        from real_robot.teleop import LeRobotTeleop

        human = LeRobotTeleop(**cfg)
        human.connect()
        return human
    raise ValueError(f"teleop.kind must be scripted, spacemouse or lerobot, got {kind!r}")


def _remote_policy(cfg: DictConfig):
    """``policy=remote:<host>:<port>`` -> a connected RemotePolicy (None without ``policy``); a refused
    key or a server that does not answer within ``remote.connect_timeout`` is a one-line error."""
    if cfg.get("policy") is None:
        return None
    from real_robot.remote_policy import RemotePolicy, parse_remote

    r = cfg.remote
    remote = RemotePolicy(parse_remote(cfg.policy), cfg.actor_id, secret_key=cfg.curve.secret,
                          server_key=r.server_key, insecure_loopback=cfg.insecure_loopback, prefetch=r.prefetch,
                          reply_timeout=r.reply_timeout)
    try:
        remote.connect(float(r.connect_timeout))
    except BaseException:
        remote.close()
        raise
    return remote


def _link(cfg: DictConfig, build_policy):
    """The link to the learner at ``connect`` (None when ``connect=null``), accepted or warned about."""
    if not cfg.get("connect"):
        return None
    from real_robot.bridge.link import ActorLink

    lk = cfg.link
    link = ActorLink(cfg.connect, cfg.actor_id, cfg.spool_dir, secret_key=cfg.curve.secret, server_key=cfg.curve.server,
                     insecure_loopback=cfg.insecure_loopback, fsync=lk.fsync, heartbeat=lk.heartbeat,
                     learner_timeout=lk.learner_timeout, resend_after=lk.resend_after, build_policy=build_policy)
    link.start()
    try:
        link.wait_for_learner(float(lk.connect_timeout))  # a rejected key stops here, before the robot is touched
    except PermissionError:
        link.close()
        raise
    return link


@one_line_errors
def run_actor(cfg: DictConfig) -> dict:
    import torch

    from real_robot.actor import Actor, LoopConfig, build_policy, install_sigterm
    from real_robot.robots import make_robot_env
    from real_robot.safety import ActionLimits, Watchdog
    from real_robot.schemas import check_actor_config

    check_actor_config(cfg)  # every setting, before the link starts or the robot is touched
    torch.set_num_threads(int(cfg.loop.threads))
    loop_kw = {k: v for k, v in OmegaConf.to_container(cfg.loop, resolve=True).items() if k != "threads"}
    loop = LoopConfig(seed=cfg.seed, stats_file=f"{cfg.run_dir}/actor_stats.json", **loop_kw)
    s, lk = cfg.safety, cfg.link
    base = None
    if cfg.get("base_policy"):  # residual RL: the base is installed here once; only residual weights stream
        from functools import partial

        from policies.base import load_base

        base = load_base(str(cfg.base_policy))
        build_policy = partial(build_policy, base=base)
    remote = _remote_policy(cfg)  # asks the policy server what it serves, before the robot is touched
    link = env = human = None
    try:
        link = _link(cfg, build_policy)
        env = make_robot_env(OmegaConf.to_container(cfg.robot, resolve=True), seed=cfg.seed)
        if remote is not None:
            remote.check_fits(env.observation_space, env.action_space)  # built, not moved yet
        human = make_human(cfg.teleop)
    except BaseException:
        for part in (remote, link, env):
            if part is not None:
                part.close()
        raise
    watchdog = Watchdog(env, s.watchdog_deadline, s.watchdog_period).start()
    actor = Actor(env, link, human, ActionLimits(s.low, s.high, s.max_delta), watchdog, loop, base=base,
                  remote=remote)
    if link is not None:
        actor.episode_offset = link.counters.get("episode_floor", 0)  # episode ids stay unique across restarts
        link.counters.set("episode_floor", actor.episode_offset + 1_000_000)
        link.stats_fn = lambda: {k: v for k, v in actor.stats().items() if not k.startswith("link_")}
    install_sigterm(actor)
    try:
        stats = actor.run()
    finally:
        watchdog.stop()
        if link is not None:
            acked = not link.rejected and link.wait_acked(float(lk.shutdown_wait))
            if not acked:
                log.warning("%d batches not acked yet: they stay in %s and are resent on the next start",
                            len(link.pending), cfg.spool_dir)
            link.close()
        if remote is not None:
            remote.close()
        env.close()
        if human is not None:
            human.close()
    if link is not None:
        link.check_key()  # rejected mid-run: the loop stopped; one line, exit status 2
    stats = actor.stats()
    actor._maybe_write_stats(force=True)
    print(json.dumps(stats))
    return stats


@one_line_errors
def run_learner(cfg: DictConfig) -> None:
    from real_robot.bridge.transport import LearnerSocket
    from real_robot.schemas import check_learner_server_config

    check_learner_server_config(cfg)  # every setting, before the socket is bound

    # A SIGTERM / Ctrl-C while the learner starts (it listens first, then spends seconds loading
    # torch and its checkpoint) is kept and honoured once it is up: it stops at once, saving as
    # on any stop, instead of dying mid-restore with the signal's default action.
    import signal

    requested: list[int] = []
    started: dict[str, Any] = {}

    def keep(signum, _frame):
        requested.append(signum)
        if "server" in started:  # up, but its own handlers are not installed yet
            started["server"].stopping = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, keep)
    b = cfg.bridge  # listen (and authenticate actors) first: loading torch and the checkpoint takes seconds
    sock = LearnerSocket(b.bind, b.get("secret_key"), b.get("allow_dir"), b.insecure_loopback)
    import torch

    from real_robot.learner import LearnerServer

    torch.set_num_threads(int(cfg.train.threads))
    try:
        server = LearnerServer(cfg, cfg.run_dir, sock=sock)
    except BaseException:
        sock.close()
        raise
    started["server"] = server
    if requested:
        log.info("stop requested during start-up (signal %d): saving and stopping", requested[0])
        server.stopping = True
    server.run(max_seconds=float(cfg.train.max_seconds))


@one_line_errors
def run_policy_server(cfg: DictConfig) -> None:
    import signal

    from real_robot.bridge.transport import LearnerSocket
    from real_robot.schemas import check_policy_server_config

    check_policy_server_config(cfg)  # every setting, before the socket is bound
    b = cfg.bridge
    sock = LearnerSocket(b.bind, b.get("secret_key"), b.get("allow_dir"), b.insecure_loopback, role="policy server")
    try:
        import torch

        from real_robot.remote_policy import PolicyServer, load_served_policy, resolve_device

        torch.set_num_threads(int(cfg.threads))
        device = resolve_device(str(cfg.device))
        keys = OmegaConf.to_container(cfg.dataset_keys, resolve=True) if cfg.get("dataset_keys") else None
        policy = load_served_policy(str(cfg.policy), device, keys)
        server = PolicyServer(policy, sock, execute=cfg.execute, source=str(cfg.policy))
        server.warmup()
        signal.signal(signal.SIGTERM, server.stop)
        signal.signal(signal.SIGINT, server.stop)
        log.info("policy server ready: %s on %s, chunks of %d actions, reads %s", cfg.policy, device, server.execute,
                 json.dumps(server.io))
        server.serve(max_seconds=float(cfg.max_seconds), stats_file=f"{cfg.run_dir}/policy_server_stats.json")
    finally:
        sock.close()


@one_line_errors
def run_keygen(cfg: DictConfig) -> None:
    from real_robot.bridge import keys

    public, secret = keys.create(cfg.out, str(cfg.name))
    print(f"public key: {public}\nsecret key: {secret} (keep it on this machine only)")


@hydra.main(config_path=CONFIG_DIR, config_name="actor", version_base=None)
def actor_main(cfg: DictConfig) -> None:
    _logging(cfg.log_level)
    run_actor(cfg)


@hydra.main(config_path=CONFIG_DIR, config_name="learner_server", version_base=None)
def learner_main(cfg: DictConfig) -> None:
    _logging(cfg.log_level)
    run_learner(cfg)


@hydra.main(config_path=CONFIG_DIR, config_name="policy_server", version_base=None)
def policy_server_main(cfg: DictConfig) -> None:
    _logging(cfg.log_level)
    run_policy_server(cfg)


@hydra.main(config_path=CONFIG_DIR, config_name="keygen", version_base=None)
def keygen_main(cfg: DictConfig) -> None:
    run_keygen(cfg)
