"""The state one proxy shares between its parts, built once by ``service.build``.

Downstream protocols reach it as ``factory.proxy``; the web pages read it.
Nothing here is global: tests build as many proxies as they like.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field, frozen

from alpaca_proxy.counters import ProxyStats

#: Bytes that may queue for a client that stopped reading (then 407 and close).
DEFAULT_BUFFER_LIMIT = 8 << 20
#: An endpoint with clients but no upstream for longer than this is unhealthy.
DEFAULT_HEALTH_GRACE = 60.0


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
    clients: int = 0


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
    #: Every connected client (``interfaces.IClient``), for limits, pages and shutdown.
    clients: set = field(factory=set)
    stats: ProxyStats = field(factory=ProxyStats)

    def origin_allowed(self, origin: str) -> bool:
        return "*" in self.origins or origin.rstrip("/").lower() in self.origins

    def close_all(self, code: int, reason: str) -> None:
        """Close every client's websocket (e.g. 1001 when the proxy stops)."""
        for client in list(self.clients):
            client.close(code, reason)
