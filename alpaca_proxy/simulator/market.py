"""What the fake upstreams (``simulator.alpaca``, ``simulator.polygon``) share.

An event barrier (tests wait for a condition, never sleep) and the ticking,
seeded random walk their simulated markets are built on.  Nothing here is
protocol code: the fakes stay independent of the proxy's.
"""

from __future__ import annotations

from typing import Any, Callable

import random

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall


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


class TickingMarket:
    """Calls ``tick()`` ``rate`` times a second on ``clock``; prices walk at random."""

    def __init__(self, clock: Any, seed: int = 1, rate: float = 2.0) -> None:
        self.clock = clock
        self.rate = rate
        self._random = random.Random(seed)
        self._prices: dict[str, float] = {}
        self._loop = LoopingCall(self.tick)
        self._loop.clock = clock

    def tick(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._loop.start(1.0 / self.rate, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _start_price(self, symbol: str) -> float:
        return self._random.uniform(20, 500)

    def _price(self, symbol: str) -> float:
        """The symbol's next price: a small random step from the last one."""
        price = self._prices.get(symbol)
        if price is None:
            price = self._start_price(symbol)
        price *= 1 + self._random.gauss(0, 0.0005)
        self._prices[symbol] = price
        return price
