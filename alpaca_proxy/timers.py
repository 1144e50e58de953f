"""Autobahn's protocol timers on a clock of our choosing.

Autobahn schedules its handshake, close and ping timeouts through a txaio
"batched timer" bound to the global reactor.  Giving each factory a timer on an
injected clock keeps time in one place (the service's reactor, or a test's
Clock) and leaves nothing behind on the global reactor.  This replaces the
factory's ``_batched_timer`` attribute, which is Autobahn's own.
"""

from __future__ import annotations

from typing import Any, Callable


class _Call:
    """A delayed call whose ``cancel`` is safe after it ran (Autobahn relies on that)."""

    __slots__ = ("_call",)  # one per connection and timer: no attribute table

    def __init__(self, call: Any) -> None:
        self._call = call

    def cancel(self) -> None:
        if self._call.active():
            self._call.cancel()


class ClockTimer:
    """The ``call_later`` interface Autobahn protocols use, on an ``IReactorTime``."""

    def __init__(self, clock: Any) -> None:
        self._clock = clock

    def call_later(self, delay: float, func: Callable[..., Any], *args: Any, **kwargs: Any) -> _Call:
        return _Call(self._clock.callLater(delay, func, *args, **kwargs))


def use_clock(factory: Any, clock: Any) -> None:
    """Run an Autobahn factory's protocol timers on ``clock``."""
    factory._batched_timer = ClockTimer(clock)
