"""Append-only, crash-safe record files: the actor's spool and the learner's durable log.

A spool is a folder of segment files ``seg_<n>.spool``. Each record is a list of byte
frames (exactly the frames of a bridge message, so resending reads and sends them):

    magic b"ESP2" | u32 frame count | u64 payload bytes | u64 xxh3-64 of (count, bytes, payload)
    payload = for each frame: u64 length | bytes

Records written before the checksum became xxh3 (magic b"ESP1", u32 CRC32) are still read;
new records are ESP2 (xxh3 runs at ~30 GB/s against CRC32's ~2 GB/s: on 1.6 MB camera
batches that was 0.9 ms of each append).

Records are only appended. A record cut short by a crash (or with a bad checksum) ends
the readable part of its segment; on open the tail is truncated so appends resume
cleanly. Nothing is unpickled: frames come back as bytes and go through the schema.

fsync policy (``fsync=``):
    ``"batch"``    fsync after every :meth:`Spool.append` (or once per group with
                   ``sync=False`` + :meth:`Spool.sync`): a record survives power loss;
    ``"interval"`` fsync at most every ``interval`` seconds, in a background thread: a
                   record survives a process crash or SIGKILL as soon as ``sync`` returns
                   (it is in the OS page cache), and a power cut loses at most the last
                   ``interval`` seconds plus one fsync's duration;
    ``"never"``    leave it to the OS (survives process crashes only).
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import xxhash

MAGIC = b"ESP2"
HEAD = struct.Struct("<4sIQQ")
COUNTED = struct.Struct("<IQ")  # frame count, payload bytes: hashed ahead of the payload
MAGIC_V1 = b"ESP1"  # CRC32 records of older spools: read, never written
HEAD_V1 = struct.Struct("<4sIQI")
LEN = struct.Struct("<Q")
MAX_RECORD = 1 << 31
FSYNC_POLICIES = ("batch", "interval", "never")


class Position(NamedTuple):
    segment: int
    offset: int


class Spool:
    def __init__(
        self,
        folder: str | os.PathLike,
        fsync: str = "batch",
        interval: float = 1.0,
        segment_bytes: int = 64 << 20,
    ):
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"spool fsync policy {fsync!r} unknown; one of {FSYNC_POLICIES}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fsync, self.interval, self.segment_bytes = fsync, interval, segment_bytes
        self._last_sync = time.monotonic()
        segs = self.segments()
        self._seg = segs[-1] if segs else 0
        path = self._path(self._seg)
        good = self._scan_end(path) if path.exists() else 0
        self._file = open(path, "ab")
        if self._file.tell() != good:  # drop a torn tail left by a crash
            self._file.truncate(good)
            self._file.seek(good)
        self._dirty = False
        self._bg: threading.Thread | None = None  # the running background fsync ("interval")

    def _path(self, seg: int) -> Path:
        return self.folder / f"seg_{seg:08d}.spool"

    def segments(self) -> list[int]:
        return sorted(int(p.stem[4:]) for p in self.folder.glob("seg_*.spool"))

    @property
    def current_segment(self) -> int:
        return self._seg

    def end(self) -> Position:
        return Position(self._seg, self._file.tell())

    def append(self, frames: Sequence, sync: bool = True) -> Position:
        """Write one record; returns the position where it starts."""
        if self._file.tell() >= self.segment_bytes:
            self.rotate()
        views = [memoryview(getattr(f, "buffer", f)).cast("B") for f in frames]
        lens = [LEN.pack(len(v)) for v in views]
        size = sum(len(v) for v in views) + LEN.size * len(views)
        if size > MAX_RECORD:
            raise ValueError(f"spool record of {size} bytes exceeds {MAX_RECORD}")
        digest = xxhash.xxh3_64(COUNTED.pack(len(views), size))  # the header's fields are covered too
        for ln, v in zip(lens, views):
            digest.update(ln)
            digest.update(v)
        start = self.end()
        self._file.write(HEAD.pack(MAGIC, len(views), size, digest.intdigest()))
        for ln, v in zip(lens, views):
            self._file.write(ln)
            self._file.write(v)
        self._dirty = True
        if sync:
            self.sync(force=False)
        return start

    def sync(self, force: bool = True) -> None:
        """Make appended records durable according to the policy (``force``: fsync now).

        After any call the records are in the OS page cache (they survive SIGKILL);
        ``batch`` (or ``force``) fsyncs before returning, ``interval`` starts a background
        fsync when the last one began ``interval`` seconds ago and has finished.
        """
        if not self._dirty:
            return
        self._file.flush()
        if force or self.fsync == "batch":
            self._wait_background()
            os.fsync(self._file.fileno())
            self._last_sync, self._dirty = time.monotonic(), False
        elif self.fsync == "interval":
            now = time.monotonic()
            if now - self._last_sync >= self.interval and (self._bg is None or not self._bg.is_alive()):
                fd = os.dup(self._file.fileno())  # the thread owns its fd: a rotate may close ours
                self._bg = threading.Thread(target=_fsync_close, args=(fd,), name="spool-fsync", daemon=True)
                self._bg.start()
                self._last_sync, self._dirty = now, False
        else:
            self._dirty = False

    def _wait_background(self) -> None:
        if self._bg is not None:
            self._bg.join()
            self._bg = None

    def rotate(self) -> None:
        """Start a new segment (older ones become deletable as a whole); ``interval`` fsyncs
        the finished segment in the background, the other policies before returning."""
        if self.fsync == "interval" and self._dirty:
            self._file.flush()
            self._wait_background()
            self._bg = threading.Thread(target=_fsync_close, args=(os.dup(self._file.fileno()),),
                                        name="spool-fsync", daemon=True)
            self._bg.start()
            self._last_sync, self._dirty = time.monotonic(), False
        else:
            self.sync(force=True)
        self._file.close()
        self._seg += 1
        self._file = open(self._path(self._seg), "ab")

    def records(self, start: Position | None = None) -> Iterator[tuple[Position, Position, list[bytes]]]:
        """Yield (start, end, frames) of every complete record from ``start`` on."""
        self._file.flush()
        for seg in self.segments():
            if start is not None and seg < start.segment:
                continue
            offset = start.offset if start is not None and seg == start.segment else 0
            with open(self._path(seg), "rb") as f:
                f.seek(offset)
                while True:
                    frames = _read_record(f)
                    if frames is None:
                        break
                    end = f.tell()
                    yield Position(seg, offset), Position(seg, end), frames
                    offset = end

    def _scan_end(self, path: Path) -> int:
        with open(path, "rb") as f:
            while _read_record(f) is not None:
                pass
            return f.tell()  # a failed read seeks back to the end of the last good record

    def delete_segment(self, seg: int) -> None:
        if seg == self._seg:
            raise ValueError("cannot delete the segment being written")
        self._path(seg).unlink(missing_ok=True)

    def close(self) -> None:
        self.sync(force=self.fsync != "never")
        self._wait_background()
        self._file.close()


def _fsync_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_record(f) -> list[bytes] | None:
    """The next record's frames, or None (file position unchanged) when the rest of the file is
    not one whole record with a matching checksum."""
    start = f.tell()
    magic = f.read(4)
    fmt = HEAD if magic == MAGIC else HEAD_V1 if magic == MAGIC_V1 else None
    head = magic + f.read(fmt.size - 4) if fmt is not None else b""
    if fmt is None or len(head) < fmt.size:
        f.seek(start)
        return None
    _, count, size, check = fmt.unpack(head)
    if size > MAX_RECORD or size > os.fstat(f.fileno()).st_size - f.tell():  # torn, or a size no file holds
        f.seek(start)
        return None
    payload = f.read(size)
    if fmt is HEAD:
        digest = xxhash.xxh3_64(head[4:16])
        digest.update(payload)
        ok = digest.intdigest() == check
    else:
        ok = zlib.crc32(payload) == check
    if len(payload) < size or not ok:
        f.seek(start)
        return None
    frames, pos, view = [], 0, memoryview(payload)
    for _ in range(count):
        if pos + LEN.size > size:
            f.seek(start)
            return None
        (n,) = LEN.unpack_from(view, pos)
        pos += LEN.size
        if pos + n > size:
            f.seek(start)
            return None
        frames.append(bytes(view[pos : pos + n]))
        pos += n
    if pos != size:  # the frames must fill the payload exactly
        f.seek(start)
        return None
    return frames


class Counters:
    """Small persistent integers (JSON, written atomically): sequence floors, episode ids."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.values: dict[str, int] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
            except ValueError:
                raise ValueError(f"{self.path} is not valid JSON; delete it only if its spool is empty") from None
            self.values = {k: int(v) for k, v in data.items()}

    def get(self, name: str, default: int = 0) -> int:
        return self.values.get(name, default)

    def set(self, name: str, value: int) -> None:
        self.values[name] = int(value)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w") as f:
            json.dump(self.values, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
