"""Finding and reading a data set's local files: one error, naming the file, for every way it can fail.

Nothing here (or anywhere in :mod:`secagg.data`) downloads: a missing file is a :class:`DataError` that
says which file is expected where.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from secagg.errors import DataError

CHUNK = 1 << 20


class Readable(Protocol):
    """A binary stream (a file, a gzip stream)."""

    def read(self, size: int = ..., /) -> bytes: ...


def find_file(dataset: str, *candidates: Path) -> Path:
    """The first of ``candidates`` that is a file; :class:`DataError` naming them all otherwise."""
    for path in candidates:
        if path.is_file():
            return path
    expected = " or ".join(str(p) for p in candidates)
    raise DataError(f"{dataset}: expected the file {expected}; not found. Nothing is downloaded: put the "
                    f"data set's files there (or point data/--data at the folder that holds them)")


def read_exactly(stream: Readable, count: int, path: Path, what: str) -> bytes:
    """``count`` bytes of ``stream``, read in bounded chunks (a header claiming a huge size costs nothing
    until the bytes are really there); :class:`DataError` naming ``path`` if fewer remain."""
    buf = bytearray()
    while len(buf) < count:
        chunk = stream.read(min(CHUNK, count - len(buf)))
        if not chunk:
            raise DataError(f"{path}: truncated: expected {count} bytes of {what}, found {len(buf)}")
        buf += chunk
    return bytes(buf)


def check_end(stream: Readable, path: Path, what: str) -> None:
    """:class:`DataError` naming ``path`` if ``stream`` has bytes left after ``what``."""
    if stream.read(1):
        raise DataError(f"{path}: trailing bytes after {what}: the file is longer than its header says")
