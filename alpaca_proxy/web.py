"""One port for everything: a twisted.web ``Site`` with the websocket streams mounted.

A websocket upgrade on a market-data path goes to the data factory, on
``/stream`` to the trading factory; an unknown path is refused with HTTP 404
before any handshake.  A plain HTTP request on a stream path gets 426 (Upgrade
Required).
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.web.resource import Resource
from twisted.web.server import Site

from alpaca_proxy import paths
from alpaca_proxy.trading import is_trading_path


class StreamsResource(Resource):
    """Routes every request by its whole path (websocket paths have many shapes)."""

    isLeaf = True

    def __init__(self, data_factory: Any, trading_factory: Any) -> None:
        super().__init__()
        self._data = WebSocketResource(data_factory)
        self._trading = WebSocketResource(trading_factory)
        self._default_feed = data_factory.default_feed

    def render(self, request: Any) -> bytes:
        path = request.path.decode("latin-1")
        if is_trading_path(path):
            resource = self._trading
        elif paths.resolve(path, self._default_feed) is not None:
            resource = self._data
        else:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"no such stream\n"
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if upgrade != b"websocket":
            request.setResponseCode(426)
            request.setHeader(b"upgrade", b"websocket")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"this is a websocket stream: connect with a websocket client\n"
        return resource.render(request)


class StreamSite(Site):
    """The site, knowing its websocket factories so it can close their clients."""

    def __init__(self, data_factory: Any, trading_factory: Any) -> None:
        super().__init__(StreamsResource(data_factory, trading_factory))
        self.factories = (data_factory, trading_factory)

    def close_all(self, code: int, reason: str) -> None:
        for factory in self.factories:
            factory.close_all(code, reason)
