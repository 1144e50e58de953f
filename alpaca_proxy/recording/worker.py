"""Disk work off the reactor thread, one job at a time, in the order given.

Recording and replay read and write files (and compress and decompress them,
which zstd does without holding the GIL).  A thread pool of exactly one thread
keeps each file's writes in order without locks; Twisted's own pool would
share its threads with name resolution and give no order.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool


class SerialWorker:
    """Runs blocking calls in one thread of its own; ``run`` gives a Deferred.

    With ``nice``, the thread runs at that lower scheduling priority (Linux
    schedules threads on their own): a second's worth of compression must not
    delay the reactor, or the clients on the same machine, when cores are busy.
    """

    def __init__(self, reactor: Any, name: str, nice: int = 0) -> None:
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name=name)
        self._started = False
        self._nice = nice

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._pool.start()
            if self._nice:
                self._pool.callInThread(_lower_priority, self._nice)

    def stop(self) -> None:
        """Wait for the thread to finish its last job (call once nothing is queued)."""
        if self._started:
            self._started = False
            self._pool.stop()

    def run(self, function: Callable[..., Any], *args: Any) -> Deferred:
        if not self._started:
            self.start()
        return deferToThreadPool(self._reactor, self._pool, function, *args)


def _lower_priority(nice: int) -> None:
    """In the worker thread: lower this thread's priority (where the OS allows it)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError):
        pass  # not Linux, or not permitted: the work still gets done


class InlineWorker:
    """Runs each call at once, in the caller's thread: for tests on a Clock."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def run(self, function: Callable[..., Any], *args: Any) -> Deferred:
        return maybeDeferred(function, *args)
