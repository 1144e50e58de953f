"""Disk work off the reactor thread, one job at a time, in the order given.

Recording and replay read and write files (and compress and decompress them,
which zstd does without holding the GIL).  A thread pool of exactly one thread
keeps each file's writes in order without locks; Twisted's own pool would
share its threads with name resolution and give no order.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool


class SerialWorker:
    """Runs blocking calls in one thread of its own; ``run`` gives a Deferred."""

    def __init__(self, reactor: Any, name: str) -> None:
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name=name)
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._pool.start()

    def stop(self) -> None:
        """Wait for the thread to finish its last job (call once nothing is queued)."""
        if self._started:
            self._started = False
            self._pool.stop()

    def run(self, function: Callable[..., Any], *args: Any) -> Deferred:
        if not self._started:
            self.start()
        return deferToThreadPool(self._reactor, self._pool, function, *args)


class InlineWorker:
    """Runs each call at once, in the caller's thread: for tests on a Clock."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def run(self, function: Callable[..., Any], *args: Any) -> Deferred:
        return maybeDeferred(function, *args)
