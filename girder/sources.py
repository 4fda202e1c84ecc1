"""The identity of a file as a source of data: what goes into the key of every block read from it.

A block's key names its source, so a source must change whenever the data does. `file_source`
takes a file's absolute path, size and modification time in nanoseconds (a `stat`, no read), or,
with `digest=True`, a digest of its content instead of the time (one full read). A mapper reads
the file at `source.path` (a `FileSource` is path-like too: `open(source)`) and
calls `source.check()` after reading, so that a file changed in the meantime fails the block
instead of caching new data under the old identity.

What it cannot see: a change that keeps both size and modification time (a tool that restores
the time, two writes within the file system's time granularity, a clock set back); a file
changed between reading and `check()`'s `stat` by a writer that restores the time; and, for a
path on a network file system, a change whose attributes this machine has not seen yet. A
digest sees any change of content, at the cost of reading the whole file to take it; its
`check()` compares the size only (a digest of each read would cost the whole benefit).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from girder.errors import SourceChanged

_DIGEST_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class FileSource:
    """A file's identity: its absolute path, size, and modification time (ns) or digest."""

    path: str
    size: int
    mtime_ns: int | None = None
    digest: str | None = None

    def __fspath__(self) -> str:
        return self.path

    def check(self) -> None:
        """Raise `SourceChanged` if the file no longer matches this identity (see the module
        docstring for what a check can see)."""
        try:
            now = os.stat(self.path)
        except OSError as exc:
            raise SourceChanged(f"{self.path} cannot be read any more: {exc}") from exc
        if now.st_size != self.size or (
            self.mtime_ns is not None and now.st_mtime_ns != self.mtime_ns
        ):
            raise SourceChanged(
                f"{self.path} changed since its identity was taken (size {self.size} -> "
                f"{now.st_size}, mtime_ns {self.mtime_ns} -> {now.st_mtime_ns}): take a new "
                "girder.file_source"
            )


def file_source(path: str | os.PathLike[str], *, digest: bool = False) -> FileSource:
    """The identity of the file at `path` as `map_reduce` sources go: its absolute path, size
    and modification time, or with `digest` its size and a BLAKE2b digest of its content (read
    once, whole). Take it again after the file changes: a new identity shares no block with
    the old one."""
    absolute = os.path.abspath(os.fspath(path))
    if not digest:
        stat = os.stat(absolute)
        return FileSource(absolute, stat.st_size, mtime_ns=stat.st_mtime_ns)
    hasher = hashlib.blake2b(digest_size=20)
    size = 0
    with open(absolute, "rb") as file:
        while chunk := file.read(_DIGEST_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    return FileSource(absolute, size, digest=hasher.hexdigest())
