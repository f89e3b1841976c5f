"""Items of a top-level JSON array, one at a time, with the byte span each item takes in the file.

The file is read in blocks and each item is decoded by the standard library's C decoder
(`JSONDecoder.raw_decode`), so memory holds one block and one item, never the whole file, and the
speed is close to that of `json.load` (two C calls per item: decode it, then match the separator).
Byte spans let a later pass copy chosen items verbatim, without decoding them again.
"""

from __future__ import annotations

import codecs
import json
import re
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from vlmforge.errors import SourceError

_WS = re.compile(r"[ \t\n\r]*")
# After an item: whitespace, then ',' and whitespace up to the next item, or ']' (or the block's end).
_SEP = re.compile(r"[ \t\n\r]*(?:(,)[ \t\n\r]*|(\]))?")
_DECODER = json.JSONDecoder()
BLOCK = 1 << 22


class _Text:
    """Text decoded from a binary file block by block; `start` is the file offset of text[0]."""

    def __init__(self, f: BinaryIO, block: int):
        self.f = f
        self.block = block
        self.utf8 = codecs.getincrementaldecoder("utf-8")()
        self.text = ""
        self.start = 0
        self.eof = False
        self.ascii = True
        self._pos = 0  # byte_at's last position and its offset: positions only grow within a block
        self._byte = 0

    def more(self, keep_from: int, at_least: int = 0) -> bool:
        """Drop text before `keep_from` and append the next block; False at the end of the file."""
        if self.eof:
            return False
        raw = self.f.read(max(self.block, at_least))
        try:
            new = self.utf8.decode(raw, final=not raw)
        except UnicodeDecodeError as e:
            # e.start counts from the bytes the decoder still held from the last block (where the text ends)
            raise SourceError(f"not UTF-8 text at byte {self.byte_at(len(self.text)) + e.start}: {e.reason}") from None
        if not raw:  # the end (`new` is empty): the text stays as it is, so the caller's positions in it still hold
            self.eof = True
            return False
        self.start = self.byte_at(keep_from)
        self.text = self.text[keep_from:] + new
        self.ascii = self.text.isascii()
        self._pos, self._byte = 0, self.start
        return True

    def byte_at(self, pos: int) -> int:
        """File offset of text[pos]; non-ASCII text is encoded from the last position asked for."""
        if self.ascii:
            return self.start + pos
        if pos < self._pos:
            self._pos, self._byte = 0, self.start
        self._byte += len(self.text[self._pos : pos].encode("utf-8"))
        self._pos = pos
        return self._byte


def _skip_ws(t: _Text, pos: int) -> tuple[str, int]:
    """Skip whitespace from `pos`: (next character or '' at the end of the file, its position)."""
    while True:
        pos = _WS.match(t.text, pos).end()
        if pos < len(t.text):
            return t.text[pos], pos
        if not t.more(pos):
            return "", 0
        pos = 0


def _decode(t: _Text, pos: int, decoder: json.JSONDecoder) -> tuple[Any, int, int]:
    """Decode the item at `pos`, reading on while it is cut off by the block's end: (item, pos, end)."""
    while True:
        try:
            obj, end = decoder.raw_decode(t.text, pos)
        except json.JSONDecodeError as e:
            cut_off = e.pos >= len(t.text) - 32 or e.msg.startswith("Unterminated")
            if cut_off and t.more(pos, len(t.text)):
                pos = 0
                continue
            raise SourceError(f"invalid JSON near byte {t.byte_at(e.pos)}: {e.msg}") from None
        # A number or literal ending exactly at the block's end may continue in the next block.
        if end >= len(t.text) and t.more(pos):
            pos = 0
            continue
        return obj, pos, end


def _check_end(t: _Text, pos: int) -> None:
    """Only whitespace may follow the list's closing ']' (json.load refuses anything else)."""
    c, at = _skip_ws(t, pos)
    if c:
        raise SourceError(f"something follows the list's closing ']' (near byte {t.byte_at(at)}: {c!r}); "
                          "a file holds one JSON list")


def iter_json_array(path: str | Path, block: int = BLOCK, what: str = "LLaVA JSON list",
                    decoder: json.JSONDecoder = _DECODER) -> Iterator[tuple[Any, int, int]]:
    """Yields (item, start byte, end byte) for each item of the JSON array in `path`, decoded by
    `decoder` (e.g. one with a parse_constant hook).

    Raises SourceError when the file is not a JSON array or is malformed (with the byte offset),
    naming the file as `what`."""
    path = Path(path)
    with open(path, "rb") as f:
        t = _Text(f, block)
        try:
            c, pos = _skip_ws(t, 0)
            if c == "\ufeff":  # a byte-order mark
                c, pos = _skip_ws(t, pos + 1)
            if c != "[":
                raise SourceError("it must be a JSON list (start with '[')")
            c, pos = _skip_ws(t, pos + 1)
            if c == "]":
                _check_end(t, pos + 1)
                return
            sep = _SEP.match
            while True:
                item, pos, end = _decode(t, pos, decoder)
                yield item, t.byte_at(pos), t.byte_at(end)
                m = sep(t.text, end)
                if m.group(1) and m.end() < len(t.text):
                    pos = m.end()
                    continue
                if m.group(2):
                    _check_end(t, m.end())
                    return
                # The separator runs into the block's end (or something else follows): look closer.
                c, pos = _skip_ws(t, end)
                if c == ",":
                    c, pos = _skip_ws(t, pos + 1)
                    if c in ("", "]"):
                        raise SourceError(f"a ',' is followed by {'the end of the file' if not c else ']'}")
                elif c == "]":
                    _check_end(t, pos + 1)
                    return
                elif c == "":
                    raise SourceError("the file ends inside the list (no closing ']')")
                else:
                    raise SourceError(f"expected ',' or ']' near byte {t.byte_at(pos)}, found {c!r}")
        except SourceError as e:
            raise SourceError(f"{path} is not a valid {what}: {e}") from None


class SpanReader:
    """Reads increasing, non-overlapping byte spans of a file through a large block buffer."""

    def __init__(self, f: BinaryIO, block: int = BLOCK):
        self.f = f
        self.block = block
        self.base = 0
        self.data = b""

    def read(self, start: int, end: int) -> bytes:
        if start < self.base or end > self.base + len(self.data):
            self.f.seek(start)
            self.base, self.data = start, self.f.read(max(self.block, end - start))
        return self.data[start - self.base : end - self.base]
