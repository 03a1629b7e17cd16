"""ZMQ sockets of the bridge: a ROUTER on the learner, one DEALER per actor.

CurveZMQ authentication and encryption are on by default: the learner loads its secret
key and an allow-list folder of actor public keys (a ZAP handler checks every
connecting key; the key's file name becomes the actor's authenticated id, so an actor
cannot speak for another). An actor needs its own secret key and the learner's public
key. Plaintext is refused unless the user set ``insecure_loopback=true`` AND both the
bind and the connect address are loopback.
"""

from __future__ import annotations

import ipaddress
import logging
import socket as pysocket

from real_robot.bridge import keys

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 512 << 20  # a peer cannot make us buffer more than this per message


def host_of(address: str) -> str:
    """'tcp://host:port' -> host."""
    if not address.startswith("tcp://") or ":" not in address[6:]:
        raise ValueError(f"address {address!r} must look like tcp://<host>:<port>")
    host = address[6:].rsplit(":", 1)[0]
    return host.strip("[]")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_plaintext(address: str, insecure_loopback: bool) -> bool:
    """True when this end runs without CURVE; raises if plaintext was asked off loopback."""
    if not insecure_loopback:
        return False
    if not is_loopback(host_of(address)):
        raise ValueError(
            f"insecure_loopback=true only works on loopback addresses (127.0.0.1), not {address}; "
            "use CURVE keys (embodied-keygen) for a network link"
        )
    return True


def free_port() -> int:
    with pysocket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fingerprint(key: bytes) -> str:
    """A CURVE public key (raw 32 bytes or Z85 text) -> its first 12 Z85 characters, the
    start of the ``public-key = "..."`` line in its ``.key`` file."""
    from zmq.utils import z85

    return (z85.encode(key) if len(key) == 32 else key).decode("ascii")[:12]


def _context():
    import zmq

    return zmq.Context.instance()


class LearnerSocket:
    """ROUTER bound on the learner. ``recv`` -> (routing id, actor id or None, frames)."""

    def __init__(
        self,
        address: str,
        secret_key: str | None = None,
        allow_dir: str | None = None,
        insecure_loopback: bool = False,
        role: str = "learner",
    ):
        import zmq

        self.zmq = zmq
        self.plaintext = check_plaintext(address, insecure_loopback)
        ctx = _context()
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted actor takes its id back
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self.sock.setsockopt(zmq.SNDHWM, 64)
        self.auth = None
        self.rejected = 0
        self.allowed: dict[bytes, str] = {}  # z85 public key -> actor name (its .key file's stem)
        self.allow_dir = allow_dir
        if not self.plaintext:
            if not secret_key or not allow_dir:
                raise ValueError("CURVE needs learner keys.secret=<file.key_secret> and keys.allow=<folder of actor .key>")
            pair = keys.load(secret_key, secret=True)
            self.allowed = keys.allow_list(allow_dir)
            self.auth = _start_authenticator(ctx, self)
            self.sock.curve_secretkey = pair.secret
            self.sock.curve_publickey = pair.public
            self.sock.curve_server = True
        self.sock.bind(address)
        self.address = address
        log.info("%s listening on %s (%s)", role, address, "PLAINTEXT loopback" if self.plaintext else "CURVE")

    def key_of(self, actor: str) -> str:
        """'<allow_dir>/<actor>.key, fingerprint ...' for an authenticated actor ('' in plaintext)."""
        found = [fingerprint(k) for k, name in self.allowed.items() if name == actor]
        return f"{self.allow_dir}/{actor}.key, fingerprint '{found[0]}'" if found else ""

    def recv(self, timeout_ms: int) -> tuple[bytes, str | None, list] | None:
        if not self.sock.poll(timeout_ms):
            return None
        frames = self.sock.recv_multipart(copy=False)
        user = None
        if not self.plaintext:
            user = frames[-1].get("User-Id") or None
        return frames[0].bytes, user, frames[1:]

    def send(self, peer: bytes, frames: list) -> None:
        self.sock.send_multipart([peer, *frames], copy=False)

    def close(self) -> None:
        self.sock.close(0)
        if self.auth is not None:
            self.auth.stop()


def _start_authenticator(ctx, owner: LearnerSocket):
    from zmq.auth.thread import ThreadAuthenticator
    from zmq.utils import z85

    class AllowList:
        def callback(self, domain: str, key: bytes) -> bool:
            ok = key in owner.allowed
            if not ok:
                owner.rejected += 1
                log.error("rejected an actor whose CURVE key (fingerprint '%s') is not in the allow-list %s",
                          fingerprint(key), owner.allow_dir)
            return ok

    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve_callback("*", credentials_provider=AllowList())
    auth.curve_user_id = lambda public: owner.allowed[z85.encode(public)]
    return auth


class ActorSocket:
    """DEALER on an actor, connected to the learner; ``auth_failed`` turns True when the
    learner refuses this actor's key, ``accepted`` when a handshake succeeded (both are
    updated by :meth:`recv`)."""

    def __init__(
        self,
        address: str,
        actor_id: str,
        secret_key: str | None = None,
        server_key: str | None = None,
        insecure_loopback: bool = False,
    ):
        import zmq

        self.zmq = zmq
        self.plaintext = check_plaintext(address, insecure_loopback)
        self.sock = _context().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTING_ID, actor_id.encode())
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 100)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        self.sock.setsockopt(zmq.SNDHWM, 256)
        self.fingerprint, self.address = "", address
        if not self.plaintext:
            if not secret_key or not server_key:
                raise ValueError("CURVE needs actor keys.secret=<file.key_secret> and keys.server=<learner .key>")
            pair = keys.load(secret_key, secret=True)
            self.sock.curve_secretkey = pair.secret
            self.sock.curve_publickey = pair.public
            self.sock.curve_serverkey = keys.load(server_key, secret=False).public
            self.fingerprint = fingerprint(pair.public)
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.auth_failed = self.accepted = False
        self.sock.connect(address)

    def _check_monitor(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)
            if event["event"] == self.zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                if not self.auth_failed:
                    log.error("the learner rejected this actor's CURVE key (fingerprint '%s'): add its .key file "
                              "to the learner's allow-list", self.fingerprint)
                self.auth_failed = True
            elif event["event"] == self.zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.auth_failed, self.accepted = False, True

    def recv(self, timeout_ms: int) -> list | None:
        self._check_monitor()
        if not self.sock.poll(timeout_ms):
            return None
        return self.sock.recv_multipart(copy=False)

    def send(self, frames: list, block: bool = False) -> bool:
        try:
            self.sock.send_multipart(frames, copy=False, flags=0 if block else self.zmq.NOBLOCK)
            return True
        except self.zmq.Again:
            return False

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(0)
