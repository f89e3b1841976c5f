"""A lean writer of standard POSIX ustar archives with fixed header fields.

Why not `webdataset.ShardWriter` or `tarfile`: both build a `TarInfo` per member and re-encode
headers in Python, which measured at 0.3-0.6x of GNU tar on passthrough JPEGs (bench/shards.py).
Here a header is a 512-byte template with only name, size and checksum filled in, and the shard's
sha256 is updated from the same buffers that are written, so the file is never read back.

Every header has mode 0444, uid/gid 0, empty owner names and mtime 0: the bytes depend only on the
member names and contents. Archives end with two zero blocks, padded to a 10 KiB record like GNU tar
and Python's tarfile, so every tar reader (GNU tar, tarfile, webdataset, `datasets`) reads them.
"""

from __future__ import annotations

import hashlib
import os

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


class TarWriter:
    """Append members to one tar file, hashing as it goes. Use as a context manager or call close()."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        self._f = open(self.path, "wb", buffering=1 << 20)
        self._sha = hashlib.sha256()
        self.offset = 0  # bytes written so far == offset of the next header

    def add(self, name: str, data: bytes) -> int:
        """Write one member; returns the offset of its header in the archive."""
        start = self.offset
        header = ustar_header(name, len(data))
        pad = -len(data) % BLOCK
        write, update = self._f.write, self._sha.update
        write(header)
        update(header)
        write(data)
        update(data)
        if pad:
            write(_ZEROS[:pad])
            update(_ZEROS[:pad])
        self.offset += BLOCK + len(data) + pad
        return start

    def close(self) -> tuple[int, str]:
        """Finish the archive (end blocks, record padding), fsync it; returns (size, sha256)."""
        end = 2 * BLOCK
        end += -(self.offset + end) % RECORD
        self._f.write(_ZEROS[:end])
        self._sha.update(_ZEROS[:end])
        self.offset += end
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        return self.offset, self._sha.hexdigest()

    def abort(self) -> None:
        self._f.close()

    def __enter__(self) -> "TarWriter":
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self.abort()
