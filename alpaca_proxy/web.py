"""One port for everything: a twisted.web ``Site`` with the websocket streams mounted.

A websocket upgrade on an Alpaca market-data path goes to the data factory, on
``/stream`` to the trading factory, on ``/{market}`` (and ``/`` in Polygon
mode) to the Polygon factory; an unknown path is refused with HTTP 404
before any handshake.  Plain HTTP: ``/`` is the status page (for a browser),
``/status.json`` what it shows, ``/metrics`` for Prometheus, ``/healthz`` 200 or
503; any other stream path gets 426 (Upgrade Required).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from prometheus_client.twisted import MetricsResource
from twisted.web.resource import Resource
from twisted.web.server import Site

from alpaca_proxy import paths
from alpaca_proxy.codec import to_json
from alpaca_proxy.metrics import registry_for
from alpaca_proxy.status import DEFAULT_HEALTH_GRACE, healthy, snapshot
from alpaca_proxy.trading import is_trading_path


_PAGE = resources.files("alpaca_proxy").joinpath("status.html").read_bytes()


class StreamsResource(Resource):
    """Routes every request by its whole path (websocket paths have many shapes)."""

    isLeaf = True

    def __init__(self, data_factory: Any, trading_factory: Any,
                 health_grace: float = DEFAULT_HEALTH_GRACE,
                 polygon_factory: Any = None) -> None:
        super().__init__()
        self._data = WebSocketResource(data_factory)
        self._trading = WebSocketResource(trading_factory)
        self._polygon = WebSocketResource(polygon_factory) if polygon_factory else None
        #: The Polygon market served at "/" instead of Alpaca's stocks, if any.
        self._polygon_root = polygon_factory.polygon_root if polygon_factory else None
        self._default_feed = data_factory.default_feed
        self._pool = data_factory.pool
        self._clock = data_factory.clock
        self._clients = data_factory.clients
        self._stats = data_factory.stats
        self._health_grace = health_grace
        self._metrics = MetricsResource(registry_for(self._pool, self._clients, self._stats))

    def render(self, request: Any) -> bytes:
        path = request.path.decode("latin-1")
        upgrade = (request.getHeader(b"upgrade") or b"").lower() == b"websocket"
        if not upgrade:
            page = self._page(path, request)
            if page is not None:
                return page
        resource = self._resource_for(path)
        if resource is None:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"no such stream\n"
        if not upgrade:
            request.setResponseCode(426)
            request.setHeader(b"upgrade", b"websocket")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"this is a websocket stream: connect with a websocket client\n"
        return resource.render(request)

    def _resource_for(self, path: str) -> Any:
        """The websocket resource serving a path, or None."""
        if is_trading_path(path):
            return self._trading
        if self._polygon is not None and paths.resolve_polygon(path, self._polygon_root):
            return self._polygon
        if paths.resolve(path, self._default_feed) is not None:
            return self._data
        return None

    def _page(self, path: str, request: Any) -> bytes | None:
        """The plain-HTTP pages, or None for a path that is not one."""
        if path == "/":
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            return _PAGE
        if path == "/status.json":
            now = self._clock.seconds()
            body = snapshot(self._pool, self._clients, self._stats, now)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            return to_json(body)
        if path == "/healthz":
            ok = healthy(self._pool.sessions, self._clock.seconds(), self._health_grace)
            request.setResponseCode(200 if ok else 503)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"ok\n" if ok else b"upstream down\n"
        if path == "/metrics":
            return self._metrics.render(request)
        return None


class StreamSite(Site):
    """The site, knowing its websocket factories so it can close their clients."""

    def __init__(self, data_factory: Any, trading_factory: Any,
                 health_grace: float = DEFAULT_HEALTH_GRACE,
                 polygon_factory: Any = None) -> None:
        super().__init__(StreamsResource(data_factory, trading_factory, health_grace,
                                         polygon_factory))
        self.factories = tuple(f for f in (data_factory, trading_factory, polygon_factory) if f)

    def close_all(self, code: int, reason: str) -> None:
        for factory in self.factories:
            factory.close_all(code, reason)
