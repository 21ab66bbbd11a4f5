"""Reading the end of a log without reading all of it."""

from __future__ import annotations

import itertools
import os
from typing import BinaryIO, Iterator


def backwards(fh: BinaryIO, block: int = 65536) -> Iterator[bytes]:
    """The lines of an open file, last first, without their newlines (the
    file's final newline does not make an empty last line)."""
    size = pos = fh.seek(0, os.SEEK_END)
    pending = b""
    while pos > 0:
        start = max(0, pos - block)
        fh.seek(start)
        data = fh.read(pos - start) + pending
        lines = data.split(b"\n")
        pending = lines.pop(0)  # the start of a line the next block finishes
        if pos == size and lines and lines[-1] == b"":
            lines.pop()
        pos = start
        yield from reversed(lines)
    if size:
        yield pending


def tail(fh: BinaryIO, lines: int, block: int = 65536) -> list[bytes]:
    """The last `lines` lines of an open file; it is left at its end."""
    out = list(itertools.islice(backwards(fh, block), max(lines, 0)))
    fh.seek(0, os.SEEK_END)
    return out[::-1]
