"""Event barriers for the fake upstreams: tests wait for a condition, never sleep."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred


class Watched:
    """``when(predicate)`` fires once the predicate holds, checked at every ``changed()``."""

    #: Set to a list by the class's __init__.
    _watchers: list[tuple[Callable[[], Any], Deferred]]

    def when(self, predicate: Callable[[], Any]) -> Deferred:
        """A Deferred that fires once ``predicate()`` holds, checked after every event."""
        waiter: Deferred = Deferred()
        self._watchers.append((predicate, waiter))
        self.changed()
        return waiter

    def changed(self) -> None:
        """Something happened (a message, a connection opened or closed)."""
        for entry in list(self._watchers):
            predicate, waiter = entry
            if predicate():
                self._watchers.remove(entry)
                waiter.callback(None)
