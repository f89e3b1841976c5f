"""A lean writer of standard POSIX ustar archives with fixed header fields.

Why not `webdataset.ShardWriter` or `tarfile`: both build a `TarInfo` per member and re-encode
headers in Python, which measured at 0.3-0.6x of GNU tar on passthrough JPEGs (bench/shards.py).
Here a header is a 512-byte template with only name, size and checksum filled in, and the shard's
sha256 is updated, on a second thread, from the same buffers that are written, so the file is never
read back.

Every header has mode 0444, uid/gid 0, empty owner names and mtime 0: the bytes depend only on the
member names and contents. Archives end with two zero blocks, padded to a 10 KiB record like GNU tar
and Python's tarfile, so every tar reader (GNU tar, tarfile, webdataset, `datasets`) reads them.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading

BLOCK = 512
RECORD = 20 * BLOCK
_ZEROS = bytes(RECORD)


def _template() -> bytearray:
    h = bytearray(BLOCK)
    h[100:108] = b"0000444\0"  # mode
    h[108:116] = b"0000000\0"  # uid
    h[116:124] = b"0000000\0"  # gid
    h[136:148] = b"00000000000\0"  # mtime
    h[148:156] = b"        "  # checksum field counts as spaces while summing
    h[156:157] = b"0"  # regular file
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    return h


_TEMPLATE = bytes(_template())
_TEMPLATE_SUM = sum(_TEMPLATE)


def ustar_header(name: str, size: int) -> bytes:
    """The 512-byte ustar header of a regular file `name` (ASCII, at most 100 bytes) of `size` bytes."""
    raw = name.encode("ascii")
    if len(raw) > 100:
        raise ValueError(f"tar member name longer than 100 bytes: {name!r}")
    if size >= 8**11:
        raise ValueError(f"tar member {name!r} is larger than 8 GiB")
    size_field = b"%011o\0" % size
    h = bytearray(_TEMPLATE)
    h[0 : len(raw)] = raw
    h[124:136] = size_field
    # Only name and size differ from the template, so the checksum is the template's plus theirs.
    chk = _TEMPLATE_SUM + sum(raw) + sum(size_field) - sum(_TEMPLATE[124:136])
    h[148:156] = b"%06o\0 " % chk
    return bytes(h)


class _ShardHasher:
    """sha256 of the bytes written, computed on a second thread (hashlib releases the GIL on large
    buffers), so hashing overlaps with reading and writing. A bounded queue caps memory use."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self._q: queue.Queue = queue.Queue(maxsize=64)  # at most ~64 MiB waiting to be hashed
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        update = self.sha.update
        while True:
            bufs = self._q.get()
            if bufs is None:
                return
            for b in bufs:
                update(b)

    def put(self, bufs: tuple) -> None:
        self._q.put(bufs)

    def hexdigest(self) -> str:
        self._q.put(None)
        self._t.join()
        return self.sha.hexdigest()

    def stop(self) -> None:
        if self._t.is_alive():
            self._q.put(None)
            self._t.join()


class TarWriter:
    """Append members to one tar file, hashing as it goes. Use as a context manager or call close().

    Each member is one `writev` of header, data and padding: no copy into a Python buffer. There is
    no fsync: a killed process loses nothing the kernel already has, the rename that marks a shard
    complete happens after the last write, and `vlmforge verify` re-hashes shards against build.json.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._hasher = _ShardHasher()
        self._pending: list = []
        self._pending_bytes = 0
        self.offset = 0  # bytes written so far == offset of the next header

    def _write(self, bufs: tuple) -> None:
        total = sum(len(b) for b in bufs)
        done = os.writev(self._fd, bufs)
        if done != total:  # rare short write: finish it buffer by buffer
            rest = b"".join(bytes(b) for b in bufs)[done:]
            while rest:
                rest = rest[os.write(self._fd, rest):]
        # Hand buffers to the hashing thread in ~1 MiB batches: one queue operation per batch.
        self._pending.extend(bufs)
        self._pending_bytes += total
        if self._pending_bytes >= 1 << 20:
            self._flush_hash()
        self.offset += total

    def _flush_hash(self) -> None:
        if self._pending:
            self._hasher.put(tuple(self._pending))
            self._pending = []
            self._pending_bytes = 0

    def add(self, name: str, data: bytes) -> int:
        """Write one member; returns the offset of its header in the archive."""
        start = self.offset
        pad = -len(data) % BLOCK
        header = ustar_header(name, len(data))
        self._write((header, data, _ZEROS[:pad]) if pad else (header, data))
        return start

    def close(self) -> tuple[int, str]:
        """Finish the archive (end blocks, record padding); returns (size, sha256)."""
        end = 2 * BLOCK
        end += -(self.offset + end) % RECORD
        self._write((_ZEROS[:end],))
        self._flush_hash()
        os.close(self._fd)
        return self.offset, self._hasher.hexdigest()

    def abort(self) -> None:
        self._hasher.stop()
        os.close(self._fd)

    def __enter__(self) -> "TarWriter":
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self.abort()
