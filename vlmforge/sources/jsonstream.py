"""Items of a top-level JSON array, one at a time, with the byte span each item takes in the file.

The file is read in blocks and each item is decoded by the standard library's C decoder
(`JSONDecoder.raw_decode`), so memory holds one block and one item, never the whole file, and the
speed is that of `json.load`. Byte spans let a later pass copy chosen items verbatim, without
decoding them again.
"""

from __future__ import annotations

import codecs
import json
import re
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from vlmforge.errors import SourceError

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
BLOCK = 1 << 22


class _Buffer:
    """Text decoded from a binary file, with the byte offset of the read position kept up to date."""

    def __init__(self, f: BinaryIO, block: int):
        self.f = f
        self.block = block
        self.utf8 = codecs.getincrementaldecoder("utf-8")()
        self.text = ""
        self.pos = 0
        self.byte = 0  # file offset of text[pos]
        self.eof = False
        self.ascii = True

    def more(self, at_least: int = 0) -> bool:
        """Append the next block (at least `at_least` bytes); False at the end of the file."""
        if self.eof:
            return False
        raw = self.f.read(max(self.block, at_least))
        try:
            new = self.utf8.decode(raw, final=not raw)
        except UnicodeDecodeError as e:
            raise SourceError(f"not UTF-8 text near byte {self.byte + len(self.text) - self.pos}: {e.reason}") from None
        self.eof = not raw
        self.text = self.text[self.pos :] + new
        self.pos = 0
        self.ascii = self.text.isascii()
        return not self.eof

    def advance_to(self, end: int) -> None:
        chunk = self.text[self.pos : end]
        self.byte += len(chunk) if self.ascii else len(chunk.encode("utf-8"))
        self.pos = end

    def skip_ws(self) -> str:
        """Skip whitespace; returns the next character, or '' at the end of the file."""
        while True:
            self.advance_to(_WS.match(self.text, self.pos).end())
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.more():
                return ""

    def value(self) -> Any:
        """Decode the value at the read position, reading more of the file while it is cut off."""
        while True:
            try:
                obj, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as e:
                cut_off = e.pos >= len(self.text) - 32 or e.msg.startswith("Unterminated")
                if cut_off and self.more(len(self.text)):
                    continue
                raise SourceError(f"invalid JSON near byte {self._byte_at(e.pos)}: {e.msg}") from None
            # A number or literal that ends exactly at the block's end may continue in the next one.
            if end >= len(self.text) and self.more():
                continue
            self.advance_to(end)
            return obj

    def _byte_at(self, pos: int) -> int:
        return self.byte + len(self.text[self.pos : pos].encode("utf-8"))


def iter_json_array(path: str | Path, block: int = BLOCK) -> Iterator[tuple[Any, int, int]]:
    """Yields (item, start byte, end byte) for each item of the JSON array in `path`.

    Raises SourceError when the file is not a JSON array or is malformed (with the byte offset)."""
    path = Path(path)
    with open(path, "rb") as f:
        buf = _Buffer(f, block)
        try:
            if buf.skip_ws() == "\ufeff":  # a byte-order mark
                buf.advance_to(buf.pos + 1)
            if buf.skip_ws() != "[":
                raise SourceError("it must be a JSON list (start with '[')")
            buf.advance_to(buf.pos + 1)
            if buf.skip_ws() == "]":
                return
            while True:
                start = buf.byte
                item = buf.value()
                yield item, start, buf.byte
                c = buf.skip_ws()
                if c == ",":
                    buf.advance_to(buf.pos + 1)
                    buf.skip_ws()
                elif c == "]":
                    return
                elif c == "":
                    raise SourceError("the file ends inside the list (no closing ']')")
                else:
                    raise SourceError(f"expected ',' or ']' near byte {buf.byte}, found {c!r}")
        except SourceError as e:
            raise SourceError(f"{path} is not a valid LLaVA JSON list: {e}") from None


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
