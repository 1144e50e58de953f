"""What a recording holds: its endpoints, their files, and one timeline over all of them.

``Catalog.open`` reads only each file's first block (at start-up, before the
reactor runs); ``timeline`` reads everything, lazily, and is meant to be
iterated in a worker thread.
"""

from __future__ import annotations

import heapq
import os
from typing import Iterator

from attrs import frozen

from alpaca_proxy.recording import fileformat
from alpaca_proxy.streams import Stream


class NotARecording(ValueError):
    """A path that holds no recording file; its text says why, in one line."""


@frozen
class Source:
    """One endpoint's files, oldest day first."""

    stream: Stream
    files: tuple[str, ...]


@frozen
class Catalog:
    path: str
    sources: tuple[Source, ...]

    @classmethod
    def open(cls, path: str) -> "Catalog":
        """The recording at ``path``: one file, or a directory of them (not recursive)."""
        if os.path.isdir(path):
            names = sorted(n for n in os.listdir(path) if n.endswith(fileformat.SUFFIX))
            candidates = [os.path.join(path, name) for name in names]
        elif os.path.exists(path):
            candidates = [path]
        else:
            raise NotARecording("%s: no such file or directory" % (path,))
        found: dict[str, tuple[Stream, list[str]]] = {}
        for candidate in candidates:
            meta = fileformat.first_metadata(candidate)
            if meta is None or not isinstance(meta.get("endpoint"), str):
                continue
            stream = Stream(str(meta.get("kind", "stocks")), meta["endpoint"])
            found.setdefault(stream.path, (stream, []))[1].append(candidate)
        if not found:
            raise NotARecording("%s: no alpaca-proxy recording there (files named *%s written"
                                " by --record)" % (path, fileformat.SUFFIX))
        return cls(path, tuple(Source(stream, tuple(files))
                               for stream, files in found.values()))

    @property
    def endpoints(self) -> frozenset[str]:
        return frozenset(source.stream.path for source in self.sources)

    def stream(self, endpoint: str) -> Stream | None:
        return next((s.stream for s in self.sources if s.stream.path == endpoint), None)

    def timeline(self, start_ns: int | None = None,
                 end_ns: int | None = None) -> Iterator[tuple[str, fileformat.Frame]]:
        """Every frame of every endpoint within [start, end), in receive-time order."""
        return (item[2:] for item in heapq.merge(
            *(_frames(source, start_ns, end_ns) for source in self.sources)))


def _frames(source: Source, start_ns: int | None,
            end_ns: int | None) -> Iterator[tuple[int, int, str, fileformat.Frame]]:
    """(receive time, sequence, endpoint, frame): the sequence keeps ties in file order."""
    sequence = 0
    for path in source.files:
        for record in fileformat.read_file(path):
            if not isinstance(record, fileformat.Frame):
                continue
            if start_ns is not None and record.received < start_ns:
                continue
            if end_ns is not None and record.received >= end_ns:
                return  # a day's files are in order: nothing later is inside the window
            sequence += 1
            yield record.received, sequence, source.stream.path, record
