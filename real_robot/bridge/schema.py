"""The versioned wire format of the actor <-> learner bridge.

A message is a list of ZMQ frames: frame 0 is a msgpack header (a dict of plain data),
frames 1.. are raw numpy buffers, one per entry of the header's ``"a"`` list
``[[name, dtype, shape], ...]``. Nothing received is unpickled or evaluated: the header is
plain msgpack (extension types refused), each array's dtype must be on :data:`DTYPES`,
and its byte length must equal ``prod(shape) * itemsize`` before ``np.frombuffer`` sees
it (zero-copy on the receive side: arrays are read-only views of the frames).

Message types (``"t"``) and the fields they must carry are in :data:`FIELDS`; any
violation raises :class:`SchemaError` (a ``ValueError``) with a one-line reason.
"""

from __future__ import annotations

import math
import re

from dataclasses import dataclass, field
from typing import Any, Sequence

import msgpack
import numpy as np

from embodied.contracts import Transition

VERSION = 1
MAX_HEADER_BYTES = 1 << 20
MAX_ARRAYS = 256
MAX_NDIM = 5
DTYPES = {"uint8", "int32", "int64", "float32", "float64", "bool"}

# message type -> {field: accepted python types}
FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "hello": {"actor": (str,), "session": (str,)},  # actor -> learner on (re)start
    "welcome": {"session": (str,), "version": (int,)},  # learner -> actor
    "transitions": {"seq": (int,), "n": (int,), "instr": (list,), "info": (list,)},
    "ack": {"seqs": (list,)},  # learner -> actor: these sequence numbers are durable
    "weights": {"version": (int,), "spec": (dict,)},  # learner -> actors, newest wins
    "heartbeat": {"time": (float, int), "stats": (dict,)},  # both ways
    "control": {"command": (str,)},  # learner -> actor: pause | resume | stop
    # robot <-> policy server (real_robot.remote_policy); "obs" arrays: state, pixels/<camera>
    "policy_hello": {"actor": (str,), "session": (str,)},  # robot -> server: what do you serve?
    "policy_info": {"session": (str,), "io": (dict,), "chunk": (int,)},  # server -> robot: io, actions per chunk
    "obs": {"req": (int,), "episode": (int,), "step": (int,), "instr": (str,)},  # robot -> server
    "chunk": {"req": (int,), "episode": (int,), "step": (int,)},  # server -> robot: "action" (K, A) for step..
    "policy_error": {"req": (int,), "error": (str,)},  # server -> robot: this request could not be acted on
}
CONTROL_COMMANDS = {"pause", "resume", "stop"}


class SchemaError(ValueError):
    """A received message does not follow the bridge schema."""


@dataclass
class Message:
    type: str
    fields: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def encode(kind: str, fields: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> list:
    """-> frames: [msgpack header, raw buffer, ...]; buffers are not copied."""
    if kind not in FIELDS:
        raise ValueError(f"unknown message type {kind!r}; one of {sorted(FIELDS)}")
    arrays = arrays or {}
    specs, buffers = [], []
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype.name not in DTYPES:
            raise ValueError(f"array {name!r} has dtype {arr.dtype}; allowed: {sorted(DTYPES)}")
        specs.append([name, arr.dtype.name, list(arr.shape)])
        buffers.append(memoryview(arr).cast("B") if arr.size else b"")
    header = {"v": VERSION, "t": kind, "a": specs, **fields}
    return [msgpack.packb(header, use_bin_type=True), *buffers]


def _no_ext(code: int, data: bytes) -> Any:
    raise SchemaError(f"msgpack extension type {code} is not allowed in a header")


def decode(frames: Sequence[Any]) -> Message:
    """frames (bytes, memoryviews or zmq.Frame) -> Message, or SchemaError."""
    if not frames:
        raise SchemaError("empty message")
    head = _buffer(frames[0])
    if len(head) > MAX_HEADER_BYTES:
        raise SchemaError(f"header of {len(head)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(head, raw=False, strict_map_key=True, ext_hook=_no_ext, max_bin_len=0)
    except SchemaError:
        raise
    except Exception as exc:  # msgpack raises several types for garbage
        raise SchemaError(f"header is not valid msgpack ({type(exc).__name__}: {exc})"[:200]) from None
    if not isinstance(header, dict):
        raise SchemaError(f"header must be a map, got {type(header).__name__}")
    if header.get("v") != VERSION:
        raise SchemaError(f"unsupported schema version {header.get('v')!r}; this side speaks {VERSION}")
    kind = header.get("t")
    if kind not in FIELDS:
        raise SchemaError(f"unknown message type {kind!r}")
    for name, types in FIELDS[kind].items():
        if not isinstance(header.get(name), types) or isinstance(header.get(name), bool):
            raise SchemaError(f"{kind} message: field {name!r} missing or not {types[0].__name__}")
    specs = header.get("a")
    if not isinstance(specs, list) or len(specs) > MAX_ARRAYS:
        raise SchemaError("field 'a' must be a list of at most %d array specs" % MAX_ARRAYS)
    if len(frames) != 1 + len(specs):
        raise SchemaError(f"{kind} message declares {len(specs)} arrays but has {len(frames) - 1} buffer frames")
    arrays = {}
    for spec, frame in zip(specs, frames[1:]):
        name, arr = _array(spec, _buffer(frame))
        arrays[name] = arr
    fields = {k: v for k, v in header.items() if k not in ("v", "t", "a")}
    return Message(kind, fields, arrays)


def _buffer(frame: Any) -> memoryview:
    buf = getattr(frame, "buffer", frame)  # zmq.Frame -> its memoryview
    try:
        return memoryview(buf).cast("B")
    except TypeError:
        raise SchemaError(f"frame of type {type(frame).__name__} is not a byte buffer") from None


def _array(spec: Any, buf: memoryview) -> tuple[str, np.ndarray]:
    if not (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str)):
        raise SchemaError(f"array spec must be [name, dtype, shape], got {str(spec)[:80]}")
    name, dtype, shape = spec
    if dtype not in DTYPES:
        raise SchemaError(f"array {name!r}: dtype {str(dtype)[:20]!r} not allowed; allowed: {sorted(DTYPES)}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_NDIM
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in shape)
    ):
        raise SchemaError(f"array {name!r}: shape must be a list of at most {MAX_NDIM} non-negative ints")
    dt = np.dtype(dtype)
    expected = math.prod(shape) * dt.itemsize  # exact ints (dims < 2**31): np.prod cost 6 % of the learner
    if expected != len(buf):
        raise SchemaError(f"array {name!r}: {dtype}{tuple(shape)} needs {expected} bytes, frame has {len(buf)}")
    try:  # a zero dimension beside huge ones matches an empty frame, but numpy cannot hold the shape
        return name, np.frombuffer(buf, dtype=dt).reshape(shape)
    except ValueError as err:
        raise SchemaError(f"array {name!r}: shape {shape[:MAX_NDIM]} cannot be built ({err})") from None


# ---------------------------------------------------------------- transitions batches


EXTRA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def pack_transitions(batch: Sequence[Transition], seq: int) -> list:
    """Transitions of one actor, in order -> frames of a ``transitions`` message.

    Each observation is sent once: rows 0..N-1 hold ``obs`` of each transition and
    ``next_index[i]`` names the row holding its ``next_obs`` -- the following row when
    the episode continues inside the batch, else an extra row appended at the end.
    """
    n = len(batch)
    rows = [t.obs for t in batch]
    next_index = np.empty(n, np.int32)
    for i, t in enumerate(batch):
        follows = i + 1 < n and not t.done and batch[i + 1].episode_id == t.episode_id
        if follows:
            next_index[i] = i + 1
        else:
            next_index[i] = len(rows)
            rows.append(t.next_obs)
    arrays: dict[str, np.ndarray] = {}
    if "state" in rows[0]:
        arrays["state"] = np.stack([r["state"] for r in rows]).astype(np.float32, copy=False)
    for cam in rows[0].get("pixels", {}):
        arrays[f"pixels/{cam}"] = np.stack([r["pixels"][cam] for r in rows])
    arrays["next_index"] = next_index
    arrays["action"] = np.stack([t.action for t in batch]).astype(np.float32, copy=False)
    arrays["reward"] = np.array([t.reward for t in batch], np.float32)
    for key in ("terminated", "truncated", "is_first", "intervention"):
        arrays[key] = np.array([getattr(t, key) for t in batch], bool)
    arrays["episode_id"] = np.array([t.episode_id for t in batch], np.int64)
    arrays["step"] = np.array([t.step for t in batch], np.int64)
    keys = sorted(batch[0].extras) if n else []
    if any(sorted(t.extras) != keys for t in batch):
        raise ValueError(f"every transition of a batch must carry the same extras, the first has {keys}")
    for key in keys:  # log_prob, value, base_action, action tokens: one (n, ...) array each
        if not EXTRA_NAME.fullmatch(key):
            raise ValueError(f"extras name {key!r} must be a short identifier")
        arrays[f"extra/{key}"] = np.stack([np.asarray(t.extras[key]) for t in batch])
    info = [{k: _plain(v) for k, v in t.info.items()} for t in batch]
    instr = [r.get("instruction", "") for r in rows]
    return encode("transitions", {"seq": seq, "n": n, "instr": instr, "info": info}, arrays)


def _plain(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    raise ValueError(f"transition info values must be plain scalars, got {type(value).__name__}")


def unpack_transitions(msg: Message) -> list[Transition]:
    """A decoded ``transitions`` message -> Transitions; SchemaError when inconsistent."""
    f, a = msg.fields, msg.arrays
    n = f["n"]
    need = ["next_index", "action", "reward", "terminated", "truncated", "is_first", "intervention", "episode_id", "step"]
    missing = [k for k in need if k not in a]
    if missing:
        raise SchemaError(f"transitions message lacks arrays {missing}")
    for key in need:
        if a[key].shape[:1] != (n,):
            raise SchemaError(f"transitions array {key!r} has {a[key].shape[:1]} rows, expected {n}")
    if a["action"].ndim != 2 or a["action"].dtype != np.float32 or a["reward"].dtype != np.float32:
        raise SchemaError("transitions 'action' must be float32 (n, A) and 'reward' float32 (n,)")
    extras = [k for k in a if k.startswith("extra/")]
    for key in extras:
        if not EXTRA_NAME.fullmatch(key[6:]) or a[key].shape[:1] != (n,) or a[key].dtype.kind not in "biuf":
            raise SchemaError(f"transitions array {key!r} must be a numeric (n, ...) array with an identifier name")
    obs_keys = [k for k in a if k == "state" or k.startswith("pixels/")]
    rows = len(f["instr"])
    for key in obs_keys:
        arr = a[key]
        ok = arr.dtype == np.float32 and arr.ndim == 2 if key == "state" else arr.dtype == np.uint8 and arr.ndim == 4
        if not ok or arr.shape[0] != rows:
            raise SchemaError(f"transitions array {key!r}: bad dtype/shape {arr.dtype}{arr.shape} for {rows} rows")
    nxt = a["next_index"]
    if nxt.dtype != np.int32 or (n and (nxt.min() < 0 or nxt.max() >= rows)):
        raise SchemaError(f"transitions 'next_index' must be int32 rows in [0, {rows})")
    if len(f["info"]) != n or not all(isinstance(d, dict) for d in f["info"]):
        raise SchemaError("transitions 'info' must be a list of n maps")
    if not all(isinstance(s, str) for s in f["instr"]):
        raise SchemaError("transitions 'instr' must be a list of str")

    def row(r: int) -> dict:
        obs: dict[str, Any] = {"instruction": f["instr"][r]}
        pixels = {k.split("/", 1)[1]: a[k][r] for k in obs_keys if k != "state"}
        if pixels:
            obs["pixels"] = pixels
        if "state" in a:
            obs["state"] = a["state"][r]
        return obs

    return [
        Transition(
            obs=row(i),
            action=a["action"][i],
            reward=float(a["reward"][i]),
            next_obs=row(int(nxt[i])),
            terminated=bool(a["terminated"][i]),
            truncated=bool(a["truncated"][i]),
            is_first=bool(a["is_first"][i]),
            episode_id=int(a["episode_id"][i]),
            step=int(a["step"][i]),
            intervention=bool(a["intervention"][i]),
            info=dict(f["info"][i]),
            extras={k[6:]: a[k][i] for k in extras},
        )
        for i in range(n)
    ]
