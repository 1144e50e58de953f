"""Test helpers: a recording websocket client, and a proxy in front of a fake upstream.

Everything runs on the real reactor over loopback sockets; waiting is done on
Deferreds fired by events (a frame arrived, a session authenticated), never by
sleeping.  Time that the logic depends on (the auth deadline) comes from a Clock.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

import msgpack
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.task import Clock, deferLater
from twisted.web.server import Site

from alpaca_proxy.credentials import Credentials
from alpaca_proxy.dialects.polygon import credentials_for
from alpaca_proxy.net import load_ca_bundle
from alpaca_proxy.proxy import Limits
from alpaca_proxy.service import Settings, build
from alpaca_proxy.simulator.alpaca import FakeAlpacaFactory
from alpaca_proxy.simulator.polygon import FakePolygonFactory
from alpaca_proxy.simulator.rest import FakeRest
from alpaca_proxy.timers import use_clock

KEY, SECRET = "PKTESTKEY", "s3cr3t-Fh9vQ2"
#: A MessagePack timestamp for test messages.
T0 = msgpack.Timestamp(1714658587, 5000)


def book(symbol, bids, asks, r=False, t=T0):
    """A crypto order-book message: (price, size) levels; ``r`` marks a whole book."""
    message = {"T": "o", "S": symbol, "t": t,
               "b": [{"p": p, "s": s} for p, s in bids], "a": [{"p": p, "s": s} for p, s in asks]}
    if r:
        message["r"] = True
    return message
#: A Polygon API key (the key is the secret there).
POLYGON_KEY = "pOlyg0nK3y-Zq81"


class RecordingClient(WebSocketClientProtocol):
    """A raw websocket client that records decoded frames and their frame type."""

    def __init__(self):
        super().__init__()
        self.frames: deque = deque()
        self.binary_flags: list[bool] = []
        self.raw: list[bytes] = []
        self._waiters: deque = deque()
        self.closed = defer.Deferred()

    def onOpen(self):
        if self.factory.on_open is not None:
            self.factory.on_open(self)
        self.factory.opened.callback(self)

    def onMessage(self, payload, isBinary):
        self.raw.append(payload)
        self.binary_flags.append(isBinary)
        # By content: the trading stream sends JSON in binary frames.
        json_payload = not isBinary or payload.lstrip()[:1] in (b"{", b"[")
        frame = json.loads(payload) if json_payload else msgpack.unpackb(payload, timestamp=0)
        if self._waiters:
            self._waiters.popleft().callback(frame)
        else:
            self.frames.append(frame)

    def onClose(self, wasClean, code, reason):
        self.close_code = code
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(reason or "handshake failed"))
        elif not self.closed.called:
            self.closed.callback(code)
        for waiter in self._waiters:
            waiter.errback(ConnectionError("closed"))
        self._waiters.clear()

    def next(self) -> defer.Deferred:
        """The next frame (a list of messages)."""
        if self.frames:
            return defer.succeed(self.frames.popleft())
        waiter: defer.Deferred = defer.Deferred()
        self._waiters.append(waiter)
        return waiter

    def send(self, message: Any, msgpack_encoding: bool | None = None, binary: bool | None = None):
        """Send a message as MessagePack if the client asked for it, else JSON."""
        use_msgpack = self.factory.msgpack if msgpack_encoding is None else msgpack_encoding
        payload = msgpack.packb(message) if use_msgpack else json.dumps(message).encode()
        self.sendMessage(payload, isBinary=use_msgpack if binary is None else binary)


@defer.inlineCallbacks
def connect(port: int, path: str = "/v2/iex", msgpack_encoding: bool = False,
            headers: dict | None = None, on_open=None, clock=None):
    """Open a websocket to the proxy; fires with the open RecordingClient."""
    all_headers = dict(headers or {})
    if msgpack_encoding:
        all_headers["Content-Type"] = "application/msgpack"
    factory = WebSocketClientFactory("ws://127.0.0.1:%d%s" % (port, path), headers=all_headers)
    factory.protocol = RecordingClient
    use_clock(factory, clock or Clock())
    factory.opened = defer.Deferred()
    factory.msgpack = msgpack_encoding
    factory.on_open = on_open
    yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
    client = yield factory.opened
    return client


@defer.inlineCallbacks
def login(port: int, path: str = "/v2/iex", msgpack_encoding: bool = False,
          key: str = KEY, secret: str = SECRET, clock=None):
    """Connect, read the welcome, authenticate; fires with the client."""
    client = yield connect(port, path, msgpack_encoding, clock=clock)
    welcome = yield client.next()
    assert welcome == [{"T": "success", "msg": "connected"}], welcome
    client.send({"action": "auth", "key": key, "secret": secret})
    reply = yield client.next()
    assert reply == [{"T": "success", "msg": "authenticated"}], reply
    return client


class Harness:
    """A fake upstream and a proxy in front of it, both on loopback ports."""

    def __init__(self, testcase, configured: bool = True, linger: float = 30.0,
                 symbol_limit: int | None = None, accounts: dict | None = None,
                 tls: bool = False, liveness=None, limits=None,
                 upstream_tls: str | None = None, trust_upstream: bool = True,
                 upstream_url: str | None = None, polygon_configured: bool = True,
                 polygon_keys: set | None = None, polygon_root: str | None = None,
                 rest: bool = True, rest_limit: int = 200, rest_window: float = 60.0,
                 rest_settings: dict | None = None, settings: dict | None = None,
                 real_time: bool = False):
        self.testcase = testcase
        #: Timers run on a Clock the test advances, or (``real_time``) on the reactor:
        #: a replay plays on its clock.
        self.clock = reactor if real_time else Clock()
        self.upstream = FakeAlpacaFactory(
            accounts={KEY: SECRET} if accounts is None else accounts, symbol_limit=symbol_limit,
            record=True, clock=self.clock)
        if configured is True:
            configured = {KEY: Credentials(KEY, SECRET)}
        self._configured = configured or None
        self._linger = linger
        self._tls = tls
        self._liveness = liveness
        # No pings to clients unless a test asks: its Clock would send them at odd times.
        self._limits = limits or Limits(ping_interval=0)
        #: With a host name: upstream speaks TLS with a certificate for "localhost",
        #: and the proxy dials wss://{upstream_tls}, trusting that CA if asked to.
        self._upstream_tls = upstream_tls
        self._trust_upstream = trust_upstream
        #: Dial this instead of the harness's own fake upstream (e.g. another proxy).
        self._upstream_url = upstream_url
        self.clients: list[RecordingClient] = []
        #: The fake Polygon cluster (every market on one port).
        self.polygon = FakePolygonFactory(
            keys={POLYGON_KEY} if polygon_keys is None else polygon_keys, clock=self.clock)
        self._polygon_accounts = (
            {credentials_for(POLYGON_KEY).key: credentials_for(POLYGON_KEY)}
            if polygon_configured else None)
        self._polygon_root = polygon_root
        #: The fake REST upstream (both hosts on one port), if ``rest``.
        self.rest = FakeRest(self.clock, accounts={KEY: SECRET} if accounts is None else accounts,
                             limit=rest_limit, window=rest_window) if rest else None
        self._rest_settings = dict(rest_settings or {}, **(settings or {}))
        self._stopped = False

    @defer.inlineCallbacks
    def start(self):
        upstream_listen, trust_root = "tcp:0:interface=127.0.0.1", None
        if self._upstream_tls:
            upstream_listen = self._certificate("upstream")
            if self._trust_upstream:
                trust_root = load_ca_bundle(self.ca_path)
        self.upstream_port = yield serverFromString(reactor, upstream_listen).listen(self.upstream)
        url = self._upstream_url or "%s://%s:%d" % (
            "wss" if self._upstream_tls else "ws", self._upstream_tls or "127.0.0.1",
            self.upstream_port.getHost().port)
        self.polygon_port = yield serverFromString(
            reactor, "tcp:0:interface=127.0.0.1").listen(self.polygon)
        polygon_url = "ws://127.0.0.1:%d" % (self.polygon_port.getHost().port,)
        rest_url = None
        if self.rest is not None:
            self.rest_port = yield serverFromString(
                reactor, "tcp:0:interface=127.0.0.1").listen(Site(self.rest, timeout=None))
            rest_url = "http://127.0.0.1:%d" % (self.rest_port.getHost().port,)
        settings = Settings(
            data_rest_url=rest_url, trading_rest_url=rest_url, **self._rest_settings,
            data_url=lambda: url, trading_url=lambda: url, polygon_url=lambda: polygon_url,
            accounts=self._configured, polygon_accounts=self._polygon_accounts,
            linger=self._linger, trust_root=trust_root, limits=self._limits,
            polygon_root=self._polygon_root,
            **({"liveness": self._liveness} if self._liveness else {}))
        built = build(settings, reactor, clock=self.clock)
        self.proxy, self.site, self.pool = built.proxy, built.site, built.pool
        self.services = built.services()
        for service in self.services:
            service.startService()
        listen = "tcp:0:interface=127.0.0.1"
        if self._tls:
            listen = self._tls_listen()
        self.proxy_port = yield serverFromString(reactor, listen).listen(self.site)
        self.port = self.proxy_port.getHost().port
        self.testcase.addCleanup(self.stop)
        return self

    def _tls_listen(self) -> str:
        return self._certificate("proxy", "localhost", "127.0.0.1")

    def _certificate(self, name: str, *hosts: str) -> str:
        """A TLS listen string with a throwaway CA's certificate for ``hosts``.

        ``self.ca_path`` is the CA.  By default the certificate names only
        "localhost", so dialling 127.0.0.1 is a host-name mismatch.
        """
        import os

        import trustme

        ca = trustme.CA()
        certificate = ca.issue_cert(*(hosts or ("localhost",)))
        folder = self.testcase.mktemp()
        os.makedirs(folder)
        self.ca_path = os.path.join(folder, "ca.pem")
        key_and_chain = os.path.join(folder, "server.pem")
        ca.cert_pem.write_to_path(self.ca_path)
        certificate.private_key_and_cert_chain_pem.write_to_path(key_and_chain)
        return "ssl:0:interface=127.0.0.1:privateKey=%s:certKey=%s" % (
            key_and_chain.replace(":", "\\:"), key_and_chain.replace(":", "\\:"))

    @defer.inlineCallbacks
    def connect(self, *args, **kwargs):
        client = yield connect(self.port, *args, clock=self.clock, **kwargs)
        self.clients.append(client)
        return client

    @defer.inlineCallbacks
    def login(self, *args, **kwargs):
        client = yield login(self.port, *args, clock=self.clock, **kwargs)
        self.clients.append(client)
        return client

    @defer.inlineCallbacks
    def polygon_login(self, market: str = "stocks", key: str = POLYGON_KEY, path: str | None = None):
        """Connect to a Polygon path, read ``connected``, authenticate; fires with the client."""
        client = yield self.connect(path or "/" + market)
        welcome = yield client.next()
        assert welcome == [{"ev": "status", "status": "connected",
                            "message": "Connected Successfully"}], welcome
        client.send({"action": "auth", "params": key})
        reply = yield client.next()
        assert reply == [{"ev": "status", "status": "auth_success",
                          "message": "authenticated"}], reply
        return client

    def rest_posted(self) -> defer.Deferred:
        """Fires once the fake REST upstream has received a POST."""
        from twisted.internet.task import LoopingCall

        seen: defer.Deferred = defer.Deferred()

        def look():
            if any(method == "POST" for method, *_ in self.rest.requests):
                poll.stop()
                seen.callback(None)

        poll = LoopingCall(look)
        poll.start(0.05)
        return seen

    def polygon_requests(self) -> list:
        """What the proxy sent the Polygon fake (not auth)."""
        return [m for _, m in self.polygon.received if m.get("action") != "auth"]

    def upstream_messages(self, action: str | None = None) -> list:
        """What the proxy sent upstream (not auth), optionally of one action."""
        return [m for _, m in self.upstream.received
                if m.get("action") != "auth" and (action is None or m.get("action") == action)]

    @defer.inlineCallbacks
    def stop(self):
        if self._stopped:
            return
        self._stopped = True
        closing = []
        for client in self.clients:
            if client.state != client.STATE_CLOSED:
                client.sendClose()
                closing.append(client.closed)
        yield defer.DeferredList(closing)
        yield self.proxy_port.stopListening()
        self.proxy.notes.stop()
        for service in reversed(self.services):
            yield service.stopService()
        for connection in list(self.upstream.connections):
            connection.dropConnection(abort=True)
        yield self.upstream_port.stopListening()
        for connection in list(self.polygon.connections):
            connection.dropConnection(abort=True)
        yield self.polygon_port.stopListening()
        if self.rest is not None:
            yield self.site.rest.close()
            for held, *_ in self.rest.held:
                if held.transport is not None:
                    held.transport.abortConnection()
            yield self.rest_port.stopListening()
        # Let the aborted sockets finish closing before trial checks the reactor.
        yield turn()


def logged(testcase, predicate) -> defer.Deferred:
    """Fires with the first log event ``predicate`` accepts, from now on."""
    from twisted.logger import globalLogPublisher

    seen: defer.Deferred = defer.Deferred()

    def observe(event):
        if not seen.called and predicate(event):
            globalLogPublisher.removeObserver(observe)
            seen.callback(event)

    globalLogPublisher.addObserver(observe)
    testcase.addCleanup(lambda: observe in globalLogPublisher._observers and
                        globalLogPublisher.removeObserver(observe))
    return seen


def listening_port(service) -> defer.Deferred:
    """The port a StreamServerEndpointService listens on, without consuming its Deferred."""
    port: defer.Deferred = defer.Deferred()

    def peek(listening):
        port.callback(listening)
        return listening

    service._waitingForPort.addCallback(peek)
    return port


def turn() -> defer.Deferred:
    """One reactor turn: lets what the current event triggers run first."""
    return deferLater(reactor, 0, lambda: None)
