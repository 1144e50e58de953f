"""Counters for the status page, /metrics and /healthz.  Pure: time is passed in."""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

from attrs import define, field


class RateMeter:
    """Events per second over the last ``window`` seconds, in one-second buckets."""

    def __init__(self, window: int = 600) -> None:
        self._window = window
        self._buckets: deque[list[float]] = deque()  # [second, count]
        self.total = 0

    def add(self, count: int, now: float) -> None:
        self.total += count
        second = int(now)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += count
        else:
            self._buckets.append([second, count])
            while self._buckets and self._buckets[0][0] <= second - self._window:
                self._buckets.popleft()

    def series(self, now: float, seconds: int = 300) -> list[float]:
        """Counts for each of the last ``seconds`` whole seconds, oldest first."""
        end = int(now)
        counts = {second: count for second, count in self._buckets}
        return [counts.get(second, 0) for second in range(end - seconds, end)]

    def rate(self, now: float, over: int = 10) -> float:
        """Average per second over the last ``over`` whole seconds."""
        return sum(self.series(now, over)) / over


@define
class ProxyStats:
    """What the whole proxy counts, beyond what sessions and clients hold."""

    #: Errors sent to clients, by code.
    errors: Counter = field(factory=Counter)
    #: Clients cut off for not reading (407).
    slow_clients: int = 0
    #: Handshakes refused (unknown path, origin, client limit), by HTTP status.
    refused: Counter = field(factory=Counter)


class TokenBucket:
    """A token bucket on an injected clock: ``rate`` tokens a second, bursts of two seconds'."""

    __slots__ = ("_clock", "_rate", "_capacity", "_tokens", "_stamp")  # one per client

    def __init__(self, clock: Any, rate: float) -> None:
        self._clock, self._rate = clock, rate
        self._capacity = self._tokens = max(1.0, 2 * rate)
        self._stamp = clock.seconds()

    def allow(self) -> bool:
        if not self._rate:
            return True
        self._refill()
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def take(self, count: float) -> float:
        """Spend ``count`` tokens, into debt if need be: seconds until the debt is paid."""
        if not self._rate:
            return 0.0
        self._refill()
        self._tokens -= count
        return -self._tokens / self._rate if self._tokens < 0 else 0.0

    def _refill(self) -> None:
        now = self._clock.seconds()
        self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
