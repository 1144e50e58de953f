"""One port for everything: a twisted.web ``Site`` with the websocket streams mounted.

A websocket upgrade on an Alpaca market-data path goes to the data factory, on
``/stream`` to the trading factory, on ``/{market}`` (and ``/`` in Polygon
mode) to the Polygon factory; an unknown path is refused with HTTP 404
before any handshake.  Plain HTTP: ``/`` is the status page (for a browser),
``/status.json`` what it shows, ``/metrics`` for Prometheus, ``/healthz`` 200 or
503, ``/subscriptions.json`` one client's subscriptions; any other plain request is
Alpaca's REST API, forwarded within the account's rate budget (``rest.py``).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from prometheus_client.twisted import MetricsResource
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from alpaca_proxy import streams
from alpaca_proxy.codec import to_json
from alpaca_proxy.logs import short
from alpaca_proxy.rest import MAX_BODY
from alpaca_proxy.metrics import registry_for
from alpaca_proxy.status import cluster, healthy, snapshot, unhealthy_reasons


_PAGE = resources.files("alpaca_proxy").joinpath("status.html").read_bytes()

#: Seconds a connection has, from accept, to send a whole request head: a client
#: sending a byte now and then must not hold a descriptor for ever (slowloris).
REQUEST_DEADLINE = 10.0
#: Seconds an HTTP connection may sit idle between requests before it is closed.
IDLE_TIMEOUT = 30.0


class StreamsResource(Resource):
    """Routes every request by its whole path (websocket paths have many shapes)."""

    isLeaf = True

    def __init__(self, proxy: Any, data: Any, trading: Any, polygon: Any,
                 rest: Any = None) -> None:
        super().__init__()
        self._proxy = proxy
        self._rest = rest
        self._data = WebSocketResource(data)
        self._trading = WebSocketResource(trading)
        self._polygon = WebSocketResource(polygon)
        self._metrics = MetricsResource(registry_for(proxy.pool, proxy.clients, proxy.stats,
                                                     rest, proxy.recorder, proxy.replay,
                                                     proxy.bus))

    def render(self, request: Any) -> bytes:
        host = request.getHeader(b"host")
        if host is not None and not self._proxy.host_allowed(host.decode("latin-1")):
            # DNS rebinding: a page on another domain resolving to 127.0.0.1.
            self._proxy.stats.refused[403] += 1
            self._proxy.notes.warn("host", "refusing an HTTP request for host {host}"
                                   " (--allow-host)", host=short(host.decode("latin-1")))
            request.setResponseCode(403)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"host not allowed: see --allow-host\n"
        path = request.path.decode("latin-1")
        upgrade = (request.getHeader(b"upgrade") or b"").lower() == b"websocket"
        if not upgrade:
            page = self._page(path, request)
            if page is not None:
                return page
            if self._rest is not None and path != "/favicon.ico":
                return self._rest.render(request)  # Alpaca's REST APIs, on the same port
        resource = self._resource_for(path)
        if resource is None and path != "/favicon.ico":  # browsers ask; nothing to note
            self._proxy.stats.refused[404] += 1
            self._proxy.notes.warn("unknown-path", "refusing {peer}: unknown path {path}",
                                   peer=str(request.getClientAddress()), path=short(path))
        if resource is None:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            if self._proxy.replay is not None:
                return b"no such stream in the recording being replayed\n"
            return b"no such stream\n"
        if not upgrade:
            request.setResponseCode(426)
            request.setHeader(b"upgrade", b"websocket")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"this is a websocket stream: connect with a websocket client\n"
        return resource.render(request)

    def _resource_for(self, path: str) -> Any:
        """The websocket resource serving a path, or None (a replay serves only the
        endpoints its recording holds)."""
        for resolve, resource in (
                (streams.resolve_trading, self._trading),
                (lambda p: streams.resolve_polygon(p, self._proxy.polygon_root), self._polygon),
                (lambda p: streams.resolve(p, self._proxy.default_feed), self._data)):
            stream = resolve(path)
            if stream is not None:
                replay = self._proxy.replay
                if replay is not None and stream.path not in replay.endpoints:
                    return None
                return resource
        return None

    def _page(self, path: str, request: Any) -> bytes | None:
        """The plain-HTTP pages, or None for a path that is not one."""
        if path == "/":
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            return _PAGE
        if path == "/status.json":
            proxy = self._proxy
            body = snapshot(proxy.pool, proxy.clients, proxy.stats, proxy.clock.seconds(),
                            simulated=proxy.simulated)
            body["rest"] = self._rest.snapshot() if self._rest is not None else None
            body["replay"] = proxy.replay.snapshot() if proxy.replay is not None else None
            body["recording"] = (proxy.recorder.snapshot() if proxy.recorder is not None
                                 else None)
            body["cluster"] = (cluster(proxy.bus, proxy.pool.sessions, proxy.clock.seconds())
                               if proxy.bus is not None else None)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            return to_json(body)
        if path == "/healthz":
            proxy = self._proxy
            ok = healthy(proxy.pool.sessions, proxy.clock.seconds(), proxy.health_grace)
            request.setResponseCode(200 if ok else 503)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            if ok:
                return b"ok\n"
            reasons = unhealthy_reasons(proxy.pool.sessions)
            return ("upstream down\n" + "".join("  %s\n" % r for r in reasons)).encode()
        if path == "/subscriptions.json":
            return self._subscriptions(request)
        if path == "/metrics":
            return self._metrics.render(request)
        return None

    def _subscriptions(self, request: Any) -> bytes:
        """One client's subscriptions (``?client=ID`` from status.json), on demand."""
        wanted = (request.args.get(b"client") or [b""])[0].decode("latin-1")
        client = next((c for c in self._proxy.clients if str(c.client_id) == wanted), None)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        if client is None or client.session is None:
            request.setResponseCode(404)
            return to_json({"error": "no such authenticated client"})
        state = client.session.state_of(client)
        if isinstance(state, dict):
            return to_json({channel: list(symbols) for channel, symbols in state.items()})
        return to_json({"streams": list(state)})


_TOO_LARGE = (b'{"message":"request body over 1 MiB"}')


class _BoundedRequest(Request):
    """A request whose body may not pass MAX_BODY: refused (413) as soon as it does,
    before twisted.web buffers the rest to memory or disk."""

    _received = 0
    _refused = False

    def gotLength(self, length: Any) -> None:
        if length is not None and length > MAX_BODY:
            self._refuse()
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > MAX_BODY or self._refused:
            self._refuse()
            return
        super().handleContentChunk(data)

    def _refuse(self) -> None:
        if self._refused:
            return
        self._refused = True
        transport = self.channel.transport
        transport.pauseProducing()  # read no more of it
        transport.write(b"HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\n"
                        b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
                        % (len(_TOO_LARGE), _TOO_LARGE))
        transport.loseConnection()


class _Channel(HTTPChannel):
    """An HTTP connection that must send its request head within a deadline."""

    _log = Logger()
    _head_deadline = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._head_deadline = self.callLater(REQUEST_DEADLINE, self._too_slow)

    def allHeadersReceived(self) -> None:
        self._stop_deadline()
        super().allHeadersReceived()

    def connectionLost(self, reason: Any) -> None:
        self._stop_deadline()
        super().connectionLost(reason)

    def _stop_deadline(self) -> None:
        if self._head_deadline is not None and self._head_deadline.active():
            self._head_deadline.cancel()
        self._head_deadline = None

    def _too_slow(self) -> None:
        self._head_deadline = None
        self.site.proxy.notes.warn("slow-request", "closing {peer}: no complete request"
                                   " within {deadline}s", peer=str(self.transport.getPeer()),
                                   deadline=REQUEST_DEADLINE)
        self.transport.abortConnection()


class StreamSite(Site):
    """The site, knowing the proxy whose clients it serves."""

    protocol = _Channel
    noisy = False

    def __init__(self, proxy: Any, data: Any, trading: Any, polygon: Any,
                 rest: Any = None) -> None:
        super().__init__(StreamsResource(proxy, data, trading, polygon, rest),
                         requestFactory=_BoundedRequest, timeout=IDLE_TIMEOUT,
                         reactor=proxy.clock)
        self.proxy = proxy
        #: The REST forwarder (its kept-alive connections close with the listener).
        self.rest = rest

    def log(self, request: Any) -> None:
        """An access line per request only with --access-log (the page polls every 2 s)."""
        if self.proxy.access_log:
            super().log(request)
