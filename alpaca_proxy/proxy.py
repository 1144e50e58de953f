"""The state one proxy shares between its parts, built once by ``service.build``.

Downstream protocols reach it as ``factory.proxy``; the web pages read it.
Nothing here is global: tests build as many proxies as they like.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

from attrs import Factory, define, field, frozen

from alpaca_proxy.counters import ProxyStats, TokenBucket
from alpaca_proxy.logs import Summarized

#: Bytes that may queue for a client that stopped reading (then 407 and close).
DEFAULT_BUFFER_LIMIT = 8 << 20
#: An endpoint with clients but no upstream for longer than this is unhealthy.
DEFAULT_HEALTH_GRACE = 60.0
#: Addresses whose failed authentications are counted at most (oldest forgotten).
MAX_FAILING_ADDRESSES = 1024
#: Failed authentications from one address are forgotten this long after the last.
FAILURE_MEMORY = 60.0
#: Failures in a row an address may have before its answers are slowed down.
FREE_FAILURES = 10


@frozen
class Limits:
    """What one client may ask of the proxy (0 means no limit)."""

    #: Bytes that may pile up for a client that stopped reading (then 407, close).
    buffer_bytes: int = DEFAULT_BUFFER_LIMIT
    #: Symbols one subscribe/unsubscribe may name, over all channels (else 405).
    symbols_per_request: int = 10_000
    #: (channel, symbol) pairs one client may hold (else 405).
    symbols_per_client: int = 20_000
    #: Messages per second a client may send, on average over a burst of twice that.
    messages_per_second: float = 50.0
    #: Clients connected at once; more are refused at the handshake with HTTP 503.
    clients: int = 1000
    #: Clients connected at once from one IP address (HTTP 503 beyond).
    clients_per_address: int = 256
    #: Seconds between pings to a client (0: never), and to wait for its pong.
    ping_interval: float = 30.0
    ping_timeout: float = 30.0


@define
class Proxy:
    """The upstream pool, the connected clients, the counters and the rules for clients."""

    #: Timers (auth deadlines, rate limits); the reactor unless a test gives a Clock.
    clock: Any
    #: The ``upstream.pool.UpstreamPool``.
    pool: Any
    limits: Limits = Limits()
    #: The Alpaca feed served at "/" (the C# proxy extension dials it).
    default_feed: str = "iex"
    #: The Polygon market served at "/" instead (Polygon mode), else None.
    polygon_root: str | None = None
    #: Seconds a client has to authenticate.
    auth_timeout: float = 10.0
    #: Web origins allowed to open websockets ("*": any); SDKs send none.
    origins: frozenset[str] = field(default=frozenset(),
                                    converter=lambda origins: frozenset(
                                        o.rstrip("/").lower() for o in origins))
    #: How long an endpoint with clients may lack its upstream before /healthz says 503.
    health_grace: float = DEFAULT_HEALTH_GRACE
    #: Host names HTTP requests may name besides loopback ones; None: any host.
    hosts: frozenset[str] | None = None
    #: Log an access line per HTTP request (twisted.web's), off by default.
    access_log: bool = False
    #: Upstream is the built-in simulator (the page says so).
    simulated: bool = False
    #: Records upstream frames (``recording.recorder.Recorder``), or None.
    recorder: Any = None
    #: Plays a recording instead of upstream (``recording.player.Player``), or None.
    replay: Any = None
    #: The cluster bus (``cluster.bus.Bus``) with --bus, or None.
    bus: Any = None
    #: Data frames waiting for the end of the reactor turn
    #: (``downstream.outbox.Outbox``); None: clients write through Twisted's buffer.
    outbox: Any = None
    #: Every connected client (``interfaces.IClient``), for limits, pages and shutdown.
    clients: set = field(factory=set)
    #: Connected clients per IP address.
    addresses: Counter = field(factory=Counter)
    #: Numbers for clients (the status page asks for one client's subscriptions by it).
    client_ids: Any = field(factory=lambda: itertools.count(1))
    stats: ProxyStats = field(factory=ProxyStats)
    #: Warnings about clients, summarized when they repeat.
    notes: Summarized = Factory(lambda self: Summarized(self.clock), takes_self=True)
    #: address -> (failed authentications in a row, when the last one came).
    _failures: dict = field(factory=dict)
    #: address -> the symbols its clients may still name in requests.
    _symbol_budgets: dict = field(factory=dict)

    def origin_allowed(self, origin: str) -> bool:
        return "*" in self.origins or origin.rstrip("/").lower() in self.origins

    def host_allowed(self, host: str) -> bool:
        """Whether an HTTP Host header may reach this proxy (DNS rebinding guard).

        While it listens on loopback only, a page on an attacker's domain that
        resolves to 127.0.0.1 must not read the status page or open streams.
        """
        if self.hosts is None:
            return True
        name = host.strip().lower()
        if name.startswith("["):
            name = name[1:name.find("]")] if "]" in name else name
        elif name.count(":") == 1:
            name = name.split(":", 1)[0]
        return (name in ("localhost", "::1") or name.endswith(".localhost")
                or name.startswith("127.") and name.replace(".", "").isdigit()
                or name in self.hosts)

    def symbol_budget(self, address: str) -> TokenBucket:
        """The symbols an address's clients may name per second (twice a full request's)."""
        budget = self._symbol_budgets.pop(address, None)
        if budget is None:
            budget = TokenBucket(self.clock, 2 * self.limits.symbols_per_request)
        self._symbol_budgets[address] = budget  # the most recently used last
        while len(self._symbol_budgets) > MAX_FAILING_ADDRESSES:
            del self._symbol_budgets[next(iter(self._symbol_budgets))]
        return budget

    def auth_failed(self, address: str) -> float:
        """Count a failed authentication from an address; the seconds its answer waits.

        Guessing is slowed per address: past ten failures in a row, each answer
        waits 50 ms, doubling per failure, at most 2 s.  A right pair is never
        delayed, so nobody is locked out.
        """
        now = self.clock.seconds()
        count, last = self._failures.pop(address, (0, now))
        if now - last > FAILURE_MEMORY:
            count = 0
        count += 1
        self._failures[address] = (count, now)
        while len(self._failures) > MAX_FAILING_ADDRESSES:
            del self._failures[next(iter(self._failures))]
        if count <= FREE_FAILURES:
            return 0.0
        return min(2.0, 0.05 * 2 ** (count - FREE_FAILURES - 1))

    def close_all(self, code: int, reason: str) -> None:
        """Close every client's websocket (e.g. 1001 when the proxy stops)."""
        for client in list(self.clients):
            client.close(code, reason)
