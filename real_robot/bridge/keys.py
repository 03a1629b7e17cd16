"""CurveZMQ key pairs and the learner's allow-list of actor public keys.

Keys are ZeroMQ certificate files (plain text, parsed, never executed):
``<name>.key`` holds the public key, ``<name>.key_secret`` the public and secret key.
The learner trusts an actor when the actor's ``<name>.key`` is in its allow-list folder;
the file's stem becomes the actor's authenticated id.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KeyPair:
    public: bytes  # z85, 40 bytes
    secret: bytes | None


def create(folder: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write ``<folder>/<name>.key`` and ``<name>.key_secret`` (secret readable by owner only)."""
    import zmq.auth

    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"key name {name!r} must be letters, digits, '-' or '_'")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = (folder / f"{name}.key", folder / f"{name}.key_secret")
    if public.exists() or secret.exists():
        raise FileExistsError(f"{public} already exists; pick another name or delete the old pair")
    public_file, secret_file = zmq.auth.create_certificates(str(folder), name)
    os.chmod(secret_file, 0o600)
    return Path(public_file), Path(secret_file)


def load(path: str | os.PathLike, secret: bool = True) -> KeyPair:
    """Read a key file; ``secret=True`` needs the ``.key_secret`` file."""
    import zmq.auth

    path = Path(path)
    if secret and path.suffix == ".key":
        path = path.with_suffix(".key_secret")
    if not path.exists():
        kind = "secret key file (.key_secret)" if secret else "public key file (.key)"
        raise FileNotFoundError(f"{kind} {path} not found; create one with: embodied-keygen name=<name>")
    try:
        public, secret_key = zmq.auth.load_certificate(str(path))
    except Exception as exc:
        raise ValueError(f"{path} is not a ZeroMQ certificate file ({exc})") from None
    if public is None or (secret and secret_key is None):
        raise ValueError(f"{path} lacks a {'secret' if secret else 'public'} key")
    return KeyPair(public, secret_key if secret else None)


def allow_list(folder: str | os.PathLike) -> dict[bytes, str]:
    """{z85 public key: actor name} from every ``*.key`` file in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"allow-list folder {folder} not found; put each actor's <name>.key there")
    allowed = {load(p, secret=False).public: p.stem for p in sorted(folder.glob("*.key"))}
    if not allowed:
        raise ValueError(f"allow-list folder {folder} holds no *.key files; copy each actor's public key there")
    return allowed
