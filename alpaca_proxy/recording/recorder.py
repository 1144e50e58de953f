"""``--record DIR``: every frame from every market-data upstream, appended to disk.

Links hand each frame to ``Recorder.frame`` as it arrives (byte for byte, with
the receive time from the clock).  Frames are packed and kept in memory, per
file (one per endpoint per UTC day); once a second, and sooner when much has
piled up, each file's frames become one compressed block appended by the
worker thread (``fileformat``): the reactor never waits on the disk, and a crash
loses at most the last second.  If the disk falls behind by more than
``MAX_BACKLOG`` bytes, frames are dropped (counted, and logged once a while)
rather than let the proxy's memory grow: recording never slows the fan-out.
"""

from __future__ import annotations

import os
import re
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from alpaca_proxy import __version__
from alpaca_proxy.logs import Summarized
from alpaca_proxy.recording import fileformat
from alpaca_proxy.streams import TRADING, Stream

#: Seconds between blocks: the most a crash can lose.
FLUSH_INTERVAL = 1.0
#: Bytes of packed frames that make a block be written before the second is up.
BLOCK_BYTES = 4 << 20
#: Bytes waiting for the disk (in memory and queued to the worker) past which frames
#: are dropped.
MAX_BACKLOG = 64 << 20
#: The names this recorder writes (``fileformat.file_name``), with their UTC day.
_OURS = re.compile(r"^(?:alpaca|polygon|trading)_.+\.(\d{4}-\d{2}-\d{2})\.zst$")


def _prune(directory: str, oldest: Any) -> list[str]:
    """In the worker thread: delete recordings of days before ``oldest``; their names."""
    removed = []
    for name in sorted(os.listdir(directory)):
        match = _OURS.match(name)
        if match is None:
            continue
        try:
            day = date.fromisoformat(match.group(1))
        except ValueError:
            continue
        if day < oldest:
            os.remove(os.path.join(directory, name))
            removed.append(name)
    return removed


class Recorder(Service):
    """Appends upstream frames to ``directory``; the worker does the disk work."""

    _log = Logger()

    def __init__(self, directory: str, clock: Any, worker: Any,
                 record_trading: bool = False, keep_days: int = 0) -> None:
        self.directory = directory
        self.record_trading = record_trading
        #: Days of recordings kept (today's included); older files are deleted at
        #: start-up and at each UTC midnight.  0: keep everything.
        self.keep_days = keep_days
        self._clock = clock
        self._worker = worker
        self._notes = Summarized(clock)
        #: (kind, endpoint, day) -> packed frames not yet handed to the worker.
        self._pending: dict[tuple[str, str, Any], list[bytes]] = {}
        self._pending_bytes = 0
        #: Bytes handed to the worker and not yet written.
        self._queued_bytes = 0
        #: Files this process has written a metadata record to.
        self._opened: set[str] = set()
        self._writes: set[Deferred] = set()
        self._day: Any = None
        self._day_start = self._day_end = 0.0
        self._flusher = LoopingCall(self.flush)
        self._flusher.clock = clock
        self._compressor: Any = None  # the worker thread's own
        #: For the status page and /metrics.
        self.frames = 0
        self.bytes = 0
        self.dropped = 0
        self.written = 0
        self.failed_writes = 0

    def wants(self, stream: Stream) -> bool:
        """Whether frames of this stream are recorded (trading: only if asked)."""
        return stream.kind != TRADING or self.record_trading

    def tap(self, stream: Stream) -> Callable[[bytes, bool], None]:
        """What a link calls with each frame it receives."""
        def frame(payload: bytes, binary: bool) -> None:
            self.frame(stream, payload, binary)
        return frame

    def frame(self, stream: Stream, payload: bytes, binary: bool) -> None:
        now = self._clock.seconds()
        if self._pending_bytes + self._queued_bytes > MAX_BACKLOG:
            self.dropped += 1
            self._notes.warn("recording-behind", "recording: the disk is {behind} bytes"
                             " behind; dropping frames", behind=self._queued_bytes)
            return
        if not self._day_start <= now < self._day_end:
            self._new_day(now)
        key = (stream.kind, stream.path, self._day)
        batch = self._pending.get(key)
        if batch is None:
            batch = self._pending[key] = []
        # The record's head, then the payload itself (not a copy: bytes don't change).
        # Microseconds: what a float of seconds since the epoch holds exactly.
        batch.append(fileformat.frame_head(round(now * 1e6) * 1000, binary, len(payload)))
        batch.append(payload)
        self.frames += 1
        self.bytes += len(payload)
        self._pending_bytes += len(payload) + 16
        if self._pending_bytes >= BLOCK_BYTES:
            self.flush()

    def _new_day(self, now: float) -> None:
        moment = datetime.fromtimestamp(now, timezone.utc)
        if self._day is not None and moment.date() != self._day:
            self.prune(moment.date())
        self._day = moment.date()
        start = datetime(moment.year, moment.month, moment.day, tzinfo=timezone.utc)
        self._day_start = start.timestamp()
        self._day_end = (start + timedelta(days=1)).timestamp()

    def flush(self) -> Deferred:
        """Hand every file's pending frames to the worker as one block each."""
        pending, self._pending = self._pending, {}
        self._pending_bytes = 0
        writes = []
        for (kind, endpoint, day), batch in pending.items():
            name = fileformat.file_name(kind, endpoint, day)
            if name not in self._opened:
                self._opened.add(name)
                meta = fileformat.metadata(kind, endpoint, int(self._clock.seconds() * 1e9),
                                           __version__)
                batch.insert(0, fileformat.pack_metadata(meta))
            body = b"".join(batch)
            writes.append(self._write(name, body, len(batch) // 2))
        return DeferredList(writes) if writes else succeed(None)

    def prune(self, today: Any = None) -> Deferred:
        """Delete this recorder's files older than ``keep_days`` (in the worker)."""
        if not self.keep_days:
            return succeed(None)
        if today is None:
            today = datetime.fromtimestamp(self._clock.seconds(), timezone.utc).date()
        oldest = today - timedelta(days=self.keep_days - 1)
        pruning = self._worker.run(_prune, self.directory, oldest)

        def done(removed: Any) -> None:
            if isinstance(removed, list) and removed:
                self._log.info("recording: deleted {count} file(s) older than {oldest}"
                               " (--record-keep-days {days}): {names}", count=len(removed),
                               oldest=oldest.isoformat(), days=self.keep_days,
                               names=", ".join(removed))
            elif not isinstance(removed, list):
                self._notes.warn("recording-prune", "recording: cannot delete old files:"
                                 " {error}", error=removed.getErrorMessage())

        return pruning.addBoth(done)

    def _write(self, name: str, body: bytes, count: int) -> Deferred:
        self._queued_bytes += len(body)
        path = os.path.join(self.directory, name)
        writing = self._worker.run(self._append, path, body)
        self._writes.add(writing)

        def done(outcome: Any) -> None:
            self._writes.discard(writing)
            self._queued_bytes -= len(body)
            if isinstance(outcome, int):
                self.written += outcome
                return
            self.failed_writes += 1
            self._notes.warn("recording-failed", "recording: cannot write {path}: {error};"
                             " {count} frame(s) lost", path=path,
                             error=outcome.getErrorMessage(), count=count)

        writing.addBoth(done)
        return writing

    def _append(self, path: str, body: bytes) -> int:
        """In the worker thread: compress, append, flush to the device."""
        if self._compressor is None:
            self._compressor = fileformat.new_compressor()
        block = fileformat.encode_block(body, self._compressor)
        with open(path, "ab") as target:
            target.write(block)
            target.flush()
            os.fsync(target.fileno())
        return len(block)

    def snapshot(self) -> dict[str, Any]:
        return {"directory": self.directory, "frames": self.frames, "bytes": self.bytes,
                "written": self.written, "dropped": self.dropped,
                "failed_writes": self.failed_writes, "trading": self.record_trading,
                "keep_days": self.keep_days}

    def startService(self) -> None:
        super().startService()
        self._log.info("recording every market-data frame{trading} to {directory}",
                       directory=self.directory,
                       trading=" and the trading stream" if self.record_trading else "")
        self._worker.start()
        self.prune()
        self._flusher.start(FLUSH_INTERVAL, now=False)

    def stopService(self) -> Deferred:
        """Write what is pending, wait for the disk, then stop the worker."""
        super().stopService()
        if self._flusher.running:
            self._flusher.stop()
        self.flush()
        self._notes.stop()
        writes = list(self._writes)

        def stop(_: Any) -> None:
            self._worker.stop()

        return DeferredList(writes).addCallback(stop)
