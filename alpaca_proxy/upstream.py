"""The proxy as a client of one upstream endpoint for one account.

``UpstreamProtocol`` only turns websocket events into calls on an
``UpstreamSession``, which does the work: wait for the welcome, authenticate
(re-sending ``auth`` on the same socket after a 406, as Alpaca's Go SDK does),
hand the router a link once authenticated, match upstream's acks and errors to
the router's requests, and fan data out to clients.  ``UpstreamService`` keeps
the connection in a ``ClientService`` and closes it with a close handshake, so
the account's connection slot frees at once.
"""

from __future__ import annotations

import random
from typing import Any, Callable

from attrs import frozen
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from hyperlink import URL
from twisted.application.internet import ClientService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates
from twisted.logger import Logger
from zope.interface import implementer

from alpaca_proxy import __version__, codec
from alpaca_proxy.books import OrderBooks
from alpaca_proxy.credentials import Credentials
from alpaca_proxy.dialects.alpaca_data import ERRORS, AlpacaDataDialect, ProtocolError
from alpaca_proxy.paths import Endpoint
from alpaca_proxy.router import Router
from alpaca_proxy.stats import RateMeter
from alpaca_proxy.timers import use_clock

#: Seconds a client's request waits for upstream's ack before it is answered from
#: local state (the Go SDK waits 3 s for an ack, then gives up on the connection).
ACK_DEADLINE = 2.5
#: Upstream errors that answer one of our (un)subscribe requests.
REQUEST_ERRORS = frozenset({400, 405, 410, 412, 413})
#: Upstream errors at auth that no retry will mend: tell clients, stop dialling.
FATAL_AUTH_ERRORS = frozenset({402, 408, 409, 411, 412})


def backoff(attempt: int, rng: random.Random, initial: float = 1.0, cap: float = 30.0) -> float:
    """Exponential backoff with jitter: about 1, 2, 4 ... seconds, capped, never 0."""
    ceiling = min(cap, initial * 2 ** max(0, attempt - 1))
    return ceiling * (0.5 + rng.random() / 2)


def endpoint_for(reactor: Any, url: str, trust_root: Any = None) -> Any:
    """A client endpoint for a ``ws://`` or ``wss://`` URL.

    TLS verifies the certificate chain (the platform's CAs, or ``trust_root``)
    and, through service-identity, that it names the host.
    """
    parsed = URL.from_text(url)
    host = parsed.host
    if parsed.scheme == "wss":
        port = parsed.port or 443
        tls = optionsForClientTLS(host, trustRoot=trust_root)
        return wrapClientTLS(tls, HostnameEndpoint(reactor, host, port))
    return HostnameEndpoint(reactor, host, parsed.port or 80)


def load_ca_bundle(path: str) -> Any:
    """A trust root from a PEM file of one or more CA certificates (ValueError if none)."""
    with open(path, "rb") as source:
        text = source.read()
    marker = b"-----END CERTIFICATE-----"
    certificates = [Certificate.loadPEM(block + marker) for block in text.split(marker)
                    if b"-----BEGIN CERTIFICATE-----" in block]
    if not certificates:
        raise ValueError("no certificate in %s" % (path,))
    return trustRootFromCertificates(certificates)


def set_no_delay(transport: Any) -> None:
    """Turn off Nagle's algorithm on a TCP transport, through a TLS layer if there is one."""
    while transport is not None:
        if hasattr(transport, "setTcpNoDelay"):
            try:
                transport.setTcpNoDelay(True)
            except OSError:  # not a TCP socket
                pass
            return
        transport = getattr(transport, "transport", None)


class UpstreamProtocol(WebSocketClientProtocol):
    """Websocket events in, calls on the session out."""

    _log = Logger()

    def connectionMade(self):
        super().connectionMade()
        # Autobahn sets TCP_NODELAY before it has copied the factory's options onto
        # the protocol, so on client connections the attempt silently fails.  With
        # Nagle's algorithm on, this socket's pings and requests and the peer's
        # delayed ACKs hold upstream data back by 40 ms now and then.
        set_no_delay(self.transport)

    def onOpen(self):
        self.factory.session.connected(self)

    def onMessage(self, payload, isBinary):
        self.factory.session.received(payload, isBinary)

    cause = None

    def connectionLost(self, reason):
        # Keep the transport's own reason (a TLS verification failure, say):
        # Autobahn's close reason only says the peer dropped the connection.
        self.cause = reason
        super().connectionLost(reason)

    def onClose(self, wasClean, code, reason):
        self.factory.session.disconnected(self, wasClean, code, reason)

    def send(self, message: dict) -> None:
        self.sendMessage(*self.factory.session.encode(message))


class UpstreamFactory(WebSocketClientFactory):
    """The session's upgrade headers, our user agent, timers on the session's clock."""

    protocol = UpstreamProtocol

    def __init__(self, session: "BaseUpstreamSession", url: str, reactor: Any) -> None:
        super().__init__(
            url,
            headers=dict(session.upgrade_headers),
            useragent="alpaca-proxy/%s" % (__version__,),
            reactor=reactor,
        )
        self.session = session
        use_clock(self, session.clock)
        self.setProtocolOptions(
            maxMessagePayloadSize=0,
            maxFramePayloadSize=0,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=2,
            # A half-open connection answers no ping: drop it and reconnect.
            autoPingInterval=session.health.ping_interval,
            autoPingTimeout=session.health.ping_timeout,
        )


@frozen
class Health:
    """How an upstream connection is judged alive.

    Pings every ``ping_interval`` seconds, dropped if no pong within
    ``ping_timeout`` (generous: Alpaca's pongs run late under load).  A data
    stream with subscriptions but no data for ``silence_timeout`` seconds is
    taken for mute and reconnected (0: never; quiet feeds are legitimate).
    """

    ping_interval: float = 10.0
    ping_timeout: float = 180.0
    silence_timeout: float = 0.0


class BaseUpstreamSession:
    """What every upstream conversation shares: connection, backoff, auth verdicts.

    Subclasses handle ``received`` frames and call ``_authenticated`` or
    ``_refused``; ``_lost`` runs when an authenticated connection drops.
    States: ``connecting``, ``authenticating``, ``ready``, ``refused``.
    """

    _log = Logger()
    #: Headers of the upgrade request upstream.
    upgrade_headers: dict[str, str] = {}

    def __init__(self, endpoint: Endpoint, credentials: Credentials, clock: Any,
                 rng: random.Random | None = None, health: Health = Health()) -> None:
        self.endpoint = endpoint
        self.health = health
        self.credentials = credentials
        self.clock = clock
        self.state = "connecting"
        #: True once upstream accepted these credentials on any connection.
        self.verified = False
        #: The fatal error code upstream answered auth with, if any.
        self.refusal: int | None = None
        self.reconnects = 0
        self.on_refused: Callable[["BaseUpstreamSession", int], None] | None = None
        self._rng = rng or random.Random()
        self._protocol: UpstreamProtocol | None = None
        self._bad_sessions = 0
        self._verdict_waiters: list[Deferred] = []
        self._closed_waiters: list[Deferred] = []
        #: For the status page and /metrics.
        self.incoming = RateMeter()
        self.bytes_in = 0
        self.messages_out = 0
        self.bytes_out = 0
        self.ready_since: float | None = None
        #: When this session last stopped being ready (or was created).
        self.down_since: float = clock.seconds()

    def __repr__(self) -> str:
        return "<%s %s key=%s %s>" % (type(self).__name__, self.endpoint.path,
                                      self.credentials.key, self.state)

    # -- for subclasses ------------------------------------------------------

    def encode(self, message: dict) -> tuple[bytes, bool]:
        """A message to upstream as (payload, is_binary)."""
        raise NotImplementedError

    def received(self, payload: bytes, binary: bool) -> None:
        raise NotImplementedError

    def _on_connected(self) -> None:
        """The websocket is open."""

    def _lost(self) -> None:
        """An authenticated connection dropped."""

    def _send(self, message: dict) -> None:
        if self._protocol is not None:
            self._protocol.send(message)

    # -- for ClientService ---------------------------------------------------

    def retry_delay(self, attempt: int) -> float:
        """ClientService's retry policy.

        ClientService counts only TCP failures and resets after every connect, so
        sessions that connected but never authenticated also make the delay grow.
        """
        return backoff(max(attempt, self._bad_sessions), self._rng)

    # -- for clients ---------------------------------------------------------

    def verdict(self) -> Deferred:
        """Fires once upstream accepted the credentials, or fails with ProtocolError."""
        if self.verified:
            return succeed(None)
        if self.refusal is not None:
            return Deferred.fromFailure(ProtocolError(self.refusal))  # type: ignore[arg-type]
        waiter: Deferred = Deferred()
        self._verdict_waiters.append(waiter)
        return waiter

    @property
    def idle(self) -> bool:
        """No client is attached."""
        raise NotImplementedError

    @property
    def subscription_count(self) -> int:
        """What this session holds upstream (channel/symbol pairs, or streams)."""
        raise NotImplementedError

    def subscriptions_of(self, client: Any) -> int:
        """How many subscriptions one attached client holds."""
        raise NotImplementedError

    # -- for the protocol ----------------------------------------------------

    def connected(self, protocol: UpstreamProtocol) -> None:
        self._protocol = protocol
        self.state = "connecting"
        self._log.info("upstream {path} connected ({key})", path=self.endpoint.path,
                       key=self.credentials.key)
        self._on_connected()

    def failed(self, reason: Any) -> None:
        """A connection attempt failed before any protocol ran (DNS, TCP).

        ClientService counts these for the backoff itself; this only says so.
        """
        self._log.warn("upstream {path} unreachable ({key}): {reason}", path=self.endpoint.path,
                       key=self.credentials.key, reason=reason.getErrorMessage())

    def disconnected(self, protocol: UpstreamProtocol, clean: bool, code: Any, reason: Any) -> None:
        if protocol is not self._protocol and self._protocol is not None:
            return
        was_ready = self.state == "ready"
        self._protocol = None
        self.ready_since = None
        if was_ready:
            self.down_since = self.clock.seconds()
        if self.state != "refused":
            self.state = "connecting"
        if was_ready:
            self._bad_sessions = 0
            self.reconnects += 1
            self._lost()
        else:
            self._bad_sessions += 1
        cause = protocol.cause.getErrorMessage() if protocol.cause is not None else ""
        self._log.info(
            "upstream {path} lost ({key}): clean={clean} code={code} reason={reason}"
            " cause={cause}", path=self.endpoint.path, key=self.credentials.key, clean=clean,
            code=code, reason=reason, cause=cause)
        self._closed_waiters, waiters = [], self._closed_waiters
        for waiter in waiters:
            waiter.callback(None)

    # -- verdicts --------------------------------------------------------------

    def _authenticated(self) -> None:
        self.state = "ready"
        self.ready_since = self.clock.seconds()
        self.verified = True
        self._bad_sessions = 0
        self._log.info("upstream {path} authenticated ({key})", path=self.endpoint.path,
                       key=self.credentials.key)
        self._verdict_waiters, waiters = [], self._verdict_waiters
        for waiter in waiters:
            waiter.callback(None)

    def _refused(self, code: int) -> None:
        self.state = "refused"
        self.refusal = code
        self._log.error("upstream {path} refused credentials {key}: {code} {text}",
                        path=self.endpoint.path, key=self.credentials.key, code=code,
                        text=ERRORS.get(code, ""))
        self._verdict_waiters, waiters = [], self._verdict_waiters
        for waiter in waiters:
            waiter.errback(ProtocolError(code))
        if self.on_refused is not None:
            self.on_refused(self, code)

    # -- closing ---------------------------------------------------------------

    def next_disconnect(self) -> Deferred:
        """Fires when the current (or next) upstream connection is lost."""
        waiter: Deferred = Deferred()
        self._closed_waiters.append(waiter)
        return waiter

    def close(self) -> Deferred:
        """Close the websocket with a close handshake; fires when it is gone."""
        if self._protocol is None:
            return succeed(None)
        waiter = self.next_disconnect()
        self._protocol.sendClose(1000, "alpaca-proxy closing")
        return waiter


class UpstreamSession(BaseUpstreamSession):
    """A market-data upstream: its clients' router, replay and fan-out.

    Asks for MessagePack, so timestamps arrive as ext -1 and pass through.
    """

    upgrade_headers = {"Content-Type": "application/msgpack"}

    def __init__(
        self,
        endpoint: Endpoint,
        credentials: Credentials,
        dialect: AlpacaDataDialect,
        clock: Any,
        rng: random.Random | None = None,
        health: Health = Health(),
    ) -> None:
        super().__init__(endpoint, credentials, clock, rng, health)
        self.dialect = dialect
        self.router = Router(on_join=self._joined)
        self.books = OrderBooks()
        self._auth_attempts = 0
        self._auth_retry: Any = None
        self._last_data = 0.0
        self._silence_check: Any = None
        self._ack_deadline: Any = None

    def encode(self, message: dict) -> tuple[bytes, bool]:
        return codec.to_msgpack(message), True

    @property
    def idle(self) -> bool:
        return not len(self.router)

    @property
    def clients(self) -> list[Any]:
        return list(self.router.clients)

    @property
    def subscription_count(self) -> int:
        return len(self.router.wanted)

    def subscriptions_of(self, client: Any) -> int:
        if client not in self.router:
            return 0
        return sum(len(symbols) for symbols in self.router.state(client).values())

    def attach(self, client: Any) -> None:
        self.router.attach(client)

    def detach(self, client: Any) -> None:
        self.router.detach(client)

    def _on_connected(self) -> None:
        self._auth_attempts = 0

    def disconnected(self, protocol: UpstreamProtocol, clean: bool, code: Any, reason: Any) -> None:
        for call in (self._auth_retry, self._silence_check, self._ack_deadline):
            if call is not None and call.active():
                call.cancel()
        self._auth_retry = self._silence_check = self._ack_deadline = None
        super().disconnected(protocol, clean, code, reason)

    def _watch_silence(self) -> None:
        """Every half silence-limit, drop a connection that went mute."""
        self._silence_check = None
        limit = self.health.silence_timeout
        if not limit or self._protocol is None or self.state != "ready":
            return
        quiet = self.clock.seconds() - self._last_data
        if quiet > limit and self.router.wanted:
            self._log.warn("upstream {path} sent no data for {quiet:.0f}s with subscriptions:"
                           " taking it for mute, reconnecting", path=self.endpoint.path,
                           quiet=quiet, silence=limit)
            self._protocol.dropConnection(abort=True)
            return
        if not self.router.wanted:
            self._last_data = self.clock.seconds()  # nothing to hear yet
        self._silence_check = self.clock.callLater(limit / 2, self._watch_silence)

    def _lost(self) -> None:
        self.books.clear()  # upstream sends fresh books after the resubscription
        self.router.upstream_lost()

    def received(self, payload: bytes, binary: bool = True) -> None:
        """One upstream frame: control messages are handled, data fanned out."""
        try:
            elements = self._split(payload)
        except codec.DecodeError as failure:
            self._log.warn("upstream {path} sent an undecodable frame: {error}",
                           path=self.endpoint.path, error=str(failure))
            return
        data = []
        for element in elements:
            if self._is_control(element.message):
                self._control(element.message)
            else:
                data.append(element)
        self.bytes_in += len(payload)
        if data and self.state == "ready":
            self._last_data = now = self.clock.seconds()
            self.incoming.add(len(data), now)
            self.publish(data)

    # -- dialect hooks -----------------------------------------------------------

    def _split(self, payload: bytes) -> list[codec.Element]:
        """A frame's messages (Alpaca's upstream speaks MessagePack to the proxy)."""
        return codec.split_frame(payload)

    def _is_control(self, message: dict) -> bool:
        return message.get("T") in ("success", "error", "subscription")

    # -- handshake -----------------------------------------------------------

    def _control(self, message: dict) -> None:
        kind = message.get("T")
        if kind == "success" and message.get("msg") == "connected":
            self._send_auth()
        elif kind == "success" and message.get("msg") == "authenticated":
            self._authenticated()
        elif kind == "subscription":
            self.router.upstream_acked(self.dialect.acked_keys(message))
        elif kind == "error":
            self._error(message.get("code"), message.get("msg"))

    def _send_auth(self) -> None:
        self._auth_retry = None
        if self._protocol is None:
            return
        self.state = "authenticating"
        self._auth_attempts += 1
        self._send({"action": "auth", "key": self.credentials.key,
                    "secret": self.credentials.secret})

    def _authenticated(self) -> None:
        super()._authenticated()
        self._last_data = self.clock.seconds()
        if self.health.silence_timeout:
            self._silence_check = self.clock.callLater(self.health.silence_timeout / 2,
                                                       self._watch_silence)
        self.router.upstream_ready(self)

    def _error(self, code: Any, text: Any) -> None:
        if self.state == "ready" and code in REQUEST_ERRORS:
            client = self.router.upstream_refused(code)
            self._log.info("upstream {path} refused a request with {code} {text} (client {client})",
                           path=self.endpoint.path, code=code, text=text, client=client)
            return
        if self.state == "authenticating" and code == 406:
            delay = min(5.0, 0.5 * self._auth_attempts)
            self._auth_retry = self.clock.callLater(delay, self._send_auth)
            self._log.warn(
                "upstream {path}: connection limit exceeded (406); the old connection is still"
                " held upstream, re-sending auth in {delay}s", path=self.endpoint.path,
                delay=delay, code=code)
            return
        if self.state == "authenticating" and code in FATAL_AUTH_ERRORS:
            self._refused(code)
            return
        self._log.warn("upstream {path} error {code} {text}", path=self.endpoint.path,
                       code=code, text=text)

    # -- link, for the router --------------------------------------------------

    def send_change(self, action: str, keys: list[tuple[str, str]]) -> None:
        self._send(self.dialect.request(action, keys))
        if self._ack_deadline is None or not self._ack_deadline.active():
            self._ack_deadline = self.clock.callLater(ACK_DEADLINE, self._settle_waiting)

    def _settle_waiting(self) -> None:
        """Clients must not wait on a slow upstream for their ack (Go gives up after 3 s)."""
        self._ack_deadline = None
        if not self.router.waiting:
            return
        settled = self.router.settle_waiting()
        self._log.warn("upstream {path} did not acknowledge within {deadline}s: answered"
                       " {count} waiting request(s) from local state", path=self.endpoint.path,
                       deadline=ACK_DEADLINE, count=len(settled))

    # -- data ------------------------------------------------------------------

    def publish(self, elements: list[codec.Element]) -> None:
        """Deliver a frame's data: encode once per (subset, encoding), send to each client."""
        routing = [self.dialect.routing(element.message) for element in elements]
        for element, (channel, _) in zip(elements, routing):
            if channel == "orderbooks":
                self.books.apply(element.message)
        routed = self.router.route(routing)
        groups: dict[tuple[tuple[int, ...], codec.Encoding], list[Any]] = {}
        for client, positions in routed.items():
            groups.setdefault((tuple(positions), client.encoding), []).append(client)
        for (positions, encoding), clients in groups.items():
            subset = [elements[i] for i in positions]
            for payload in encoding.frames(subset):
                prepared = clients[0].prepare(payload, encoding.binary)
                for client in clients:
                    client.send_prepared(prepared)
                self.bytes_out += len(payload) * len(clients)
            for client in clients:
                client.messages_sent += len(subset)
            self.messages_out += len(subset) * len(clients)

    def _joined(self, client: Any, keys: set[tuple[str, str]]) -> None:
        """A client joined books upstream already streams: send it each whole book."""
        symbols: dict[str, None] = {}
        for channel, symbol in sorted(keys):
            if channel == "orderbooks":
                symbols.update(dict.fromkeys(self.books.symbols() if symbol == "*" else [symbol]))
        snapshots = [self.books.snapshot(symbol) for symbol in symbols]
        elements = [codec.Element.of(snapshot) for snapshot in snapshots if snapshot]
        for payload in client.encoding.frames(elements):
            client.send_prepared(client.prepare(payload, client.encoding.binary))


@implementer(IStreamClientEndpoint)
class _ReportingEndpoint:
    """An endpoint that tells the session about failed connection attempts."""

    def __init__(self, endpoint: Any, session: BaseUpstreamSession) -> None:
        self._endpoint = endpoint
        self._session = session

    def connect(self, factory: Any) -> Deferred:
        def report(reason: Any) -> Any:
            self._session.failed(reason)
            return reason

        return self._endpoint.connect(factory).addErrback(report)


class UpstreamService(MultiService):
    """A session's reconnecting connection, closed with a handshake on stop."""

    def __init__(self, session: BaseUpstreamSession, url: str, reactor: Any,
                 trust_root: Any = None) -> None:
        super().__init__()
        self.session = session
        self.url = url
        self._client = ClientService(
            _ReportingEndpoint(endpoint_for(reactor, url, trust_root), session),
            UpstreamFactory(session, url, reactor),
            retryPolicy=session.retry_delay,
            clock=session.clock,
        )
        self._client.setServiceParent(self)

    def stopService(self) -> Deferred:
        closing = self.session.close()
        timeout = self.session.clock.callLater(3, closing.cancel)

        def stop(_: Any) -> Deferred:
            if timeout.active():
                timeout.cancel()
            return MultiService.stopService(self)

        return closing.addBoth(stop)
