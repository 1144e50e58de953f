"""The proxy as Alpaca's market-data server, for local clients.

What a client sees (the local wire protocol):

- Upgrade on any path ``paths.resolve`` knows (query strings and doubled
  slashes are fine); any other path is refused with HTTP 404.  The upgrade's
  ``Content-Type: application/msgpack`` selects MessagePack in binary frames,
  anything else JSON in text frames.  Client payloads are decoded by content,
  whatever their frame type, and may be fragmented.
- ``[{"T":"success","msg":"connected"}]`` comes first, even if the client's
  ``auth`` was already on its way.  Credentials come by ``auth`` message, or on
  the upgrade as ``APCA-API-KEY-ID``/``APCA-API-SECRET-KEY`` or HTTP Basic.
  Answers: ``authenticated``, or errors 402 (wrong pair), 403 (again), 404 (no
  auth within the deadline; the socket is then closed), 401 (subscribing first);
  upstream's 409/411 are passed on.  Options endpoints speak MessagePack only:
  without a ``Content-Type`` a client gets MessagePack, and one that asks for
  JSON gets 412 after the welcome and in reply to every request.  Messages that arrive while the verdict is
  pending are answered after it, in order.
- ``subscribe``/``unsubscribe`` add to / remove from the client's own state;
  each is answered by one ``subscription`` message listing that whole state,
  before any data it unlocks.  400/405/410/413 refuse a request and leave the
  state as it was.
- Data frames are arrays of the upstream messages the client's state matches,
  in upstream order, each at most once, at most 1 MiB per frame.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from attrs import frozen
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from alpaca_proxy import __version__, codec, paths
from alpaca_proxy.credentials import header_credentials
from alpaca_proxy.timers import use_clock
from alpaca_proxy.upstream import set_no_delay
from alpaca_proxy.dialects.alpaca_data import (
    AUTHENTICATED, DIALECTS, WELCOME, Auth, Change, ProtocolError, error,
)
from alpaca_proxy.router import applied, keys_of
from alpaca_proxy.stats import ProxyStats

#: Messages a client may send while its auth verdict is pending.
MAX_BACKLOG = 64
#: Largest message a client may send (thousands of symbols fit easily).
MAX_CLIENT_MESSAGE = 16 << 20
#: Bytes that may queue for a client that stopped reading (then 407 and close).
DEFAULT_BUFFER_LIMIT = 8 << 20


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


class _RateLimit:
    """A token bucket on an injected clock."""

    def __init__(self, clock: Any, rate: float) -> None:
        self._clock, self._rate = clock, rate
        self._capacity = self._tokens = max(1.0, 2 * rate)
        self._stamp = clock.seconds()

    def allow(self) -> bool:
        if not self._rate:
            return True
        now = self._clock.seconds()
        self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


@implementer(IPushProducer)
class _Backpressure:
    """Told by the transport when a client stops reading; counts what piles up since.

    Twisted pauses its producer once the transport's buffer passes its high-water
    mark; anything written while paused waits in proxy memory.  Past ``limit``
    bytes the client is not keeping up and is cut off, never slowing anyone else.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.paused = False
        self.queued = 0

    def pauseProducing(self) -> None:
        # May be called again while paused: keep counting from the first pause.
        if not self.paused:
            self.paused, self.queued = True, 0

    def resumeProducing(self) -> None:
        self.paused, self.queued = False, 0

    def stopProducing(self) -> None:
        self.paused = True

    def overflows(self, size: int) -> bool:
        """Account for ``size`` more bytes; True once past the limit."""
        if self.paused:
            self.queued += size
        return self.queued > self.limit


class ClientProtocol(WebSocketServerProtocol):
    """What every local client connection shares.

    The auth gate (messages that arrive while a verdict is pending wait for it,
    in order), the auth deadline, joining and leaving the upstream session, and
    sending.  Subclasses speak their stream's protocol through the hooks below.
    """

    _log = Logger()
    # onClose may run without onConnect/onOpen (a failed handshake).
    session = None
    _deadline = None
    endpoint = None
    peer_name = None
    encoding = codec.JSON
    _rate = None
    messages_sent = 0
    connected_at = 0.0

    # -- hooks -------------------------------------------------------------------

    def _resolve(self, path: str) -> paths.Endpoint | None:
        """The upstream endpoint a request path stands for, or None (HTTP 404)."""
        raise NotImplementedError

    def _opened(self) -> None:
        """The websocket is open (send a greeting, if the protocol has one)."""

    def _request(self, message: Any) -> None:
        """Handle one decoded message, outside any pending auth verdict."""
        raise NotImplementedError

    def _undecodable(self, why: str) -> None:
        raise NotImplementedError

    def _auth_accepted(self) -> None:
        raise NotImplementedError

    def _auth_refused(self, code: int) -> None:
        raise NotImplementedError

    def _deadline_passed(self) -> None:
        """Say why the connection is about to close for lack of auth."""

    # -- websocket events ------------------------------------------------------

    def onConnect(self, request):
        endpoint = self._resolve(request.path)
        if endpoint is None:
            self._log.info("refusing {peer}: unknown path {path}", peer=request.peer,
                           path=request.path)
            self.factory.stats.refused[404] += 1
            raise ConnectionDeny(ConnectionDeny.NOT_FOUND, "unknown stream path")
        origin = request.headers.get("origin")
        if origin is not None and not self.factory.origin_allowed(origin):
            # A web page in the user's browser must not drive the local proxy.
            self._log.warn("refusing {peer}: websocket from web origin {origin} not allowed",
                           peer=request.peer, origin=origin)
            self.factory.stats.refused[403] += 1
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        limit = self.factory.limits.clients
        if limit and len(self.factory.clients) >= limit:
            self._log.warn("refusing {peer}: {count} clients connected, the limit",
                           peer=request.peer, count=len(self.factory.clients))
            self.factory.stats.refused[503] += 1
            raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, "too many clients")
        self._rate = _RateLimit(self.factory.clock, self.factory.limits.messages_per_second)
        self.endpoint = endpoint
        self.content_type = request.headers.get("content-type")
        self.encoding = codec.encoding_for(self.content_type)
        self.peer_name = request.peer
        self._header_credentials = header_credentials(request.headers)
        self._authenticating = False
        self._backlog: deque[Any] = deque()
        return None

    def onOpen(self):
        try:
            self._log.info("client {peer} connected to {path} ({encoding})", peer=self.peer_name,
                           path=self.endpoint.path, encoding=self.encoding.name)
            self.factory.clients.add(self)
            self.connected_at = self.factory.clock.seconds()
            set_no_delay(self.transport)
            self._watch_backpressure()
            self._opened()
            self._deadline = self.factory.clock.callLater(
                self.factory.auth_timeout, self._auth_timed_out)
            if self._header_credentials is not None:
                self._authenticate(self._header_credentials)
        except Exception:
            self._log.failure("opening client {peer}", peer=self.peer_name)
            self.dropConnection(abort=True)

    def onMessage(self, payload, isBinary):
        try:
            message = codec.decode(payload)
        except codec.DecodeError as failure:
            self._undecodable("undecodable payload: %s" % (failure,))
            return
        messages = message if isinstance(message, list) and message else [message]
        for each in messages:
            self._handle(each)

    def onClose(self, wasClean, code, reason):
        self.factory.clients.discard(self)
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        if self.session is not None:
            self.factory.pool.leave(self.session, self)
            self.session = None
            self._log.info("client {peer} left {path}: code={code}", peer=self.peer_name,
                           path=self.endpoint.path, code=code)

    # -- the auth gate -----------------------------------------------------------

    def _handle(self, message: Any) -> None:
        if not self._rate.allow():
            if self._sendable:
                self._log.warn("closing {peer} on {path}: more than {rate} messages a second",
                               peer=self.peer_name, path=self.endpoint.path,
                               rate=self.factory.limits.messages_per_second)
                self.close(1008, "too many messages")
            return
        if self._authenticating:
            if len(self._backlog) >= MAX_BACKLOG:
                self._undecodable("too many messages before the auth verdict")
                return
            self._backlog.append(message)
            return
        self._request(message)

    def _authenticate(self, credentials) -> None:
        self._authenticating = True
        verdict = self.factory.pool.authenticate(self.endpoint, credentials)
        verdict.addCallbacks(self._authenticated, self._auth_failed)
        verdict.addErrback(lambda f: self._log.failure("auth of {peer}", f, peer=self.peer_name))

    def _authenticated(self, session) -> None:
        self._authenticating = False
        if not self._sendable:
            return
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self.session = session
        self.factory.pool.join(session, self)
        self._log.info("client {peer} authenticated on {path} as {key}", peer=self.peer_name,
                       path=self.endpoint.path, key=session.credentials.key)
        self._auth_accepted()
        self._drain()

    def _auth_failed(self, failure) -> None:
        self._authenticating = False
        if failure.check(ProtocolError):
            code = failure.value.code
        else:
            self._log.failure("auth of {peer}", failure, peer=self.peer_name)
            code = 500
        if not self._sendable:
            return
        self._log.info("client {peer} on {path}: auth refused with {code}", peer=self.peer_name,
                       path=self.endpoint.path, code=code)
        self._auth_refused(code)
        self._drain()

    def _drain(self) -> None:
        while self._backlog and not self._authenticating:
            self._request(self._backlog.popleft())

    def _auth_timed_out(self) -> None:
        if self.session is None:
            self._log.info("client {peer}: auth timeout", peer=self.peer_name)
            self._deadline_passed()
            self.close(1000, "auth timeout")

    def _within_limits(self, change: Change) -> bool:
        """Whether a data client's (un)subscribe stays within the proxy's symbol limits."""
        limits = self.factory.limits
        named = sum(len(symbols) for symbols in change.channels.values())
        if limits.symbols_per_request and named > limits.symbols_per_request:
            return False
        if limits.symbols_per_client and change.action == "subscribe":
            held = keys_of(applied(self.session.router.state(self), change))
            return len(held) <= limits.symbols_per_client
        return True

    # -- sending -----------------------------------------------------------------

    _backpressure: _Backpressure | None = None

    def _watch_backpressure(self) -> None:
        # twisted.web's HTTPChannel stays registered as the transport's producer
        # after Autobahn takes the connection over from it.
        if getattr(self.transport, "producer", None) is not None:
            self.transport.unregisterProducer()
        self._backpressure = _Backpressure(self.factory.limits.buffer_bytes)
        self.transport.registerProducer(self._backpressure, True)

    def _room_for(self, size: int) -> bool:
        """False (and the client is being cut off) if it stopped reading."""
        if self._backpressure is None or not self._backpressure.overflows(size):
            return True
        self._log.warn("dropping slow client {peer} on {path}: {queued} bytes queued",
                       peer=self.peer_name, path=self.endpoint.path,
                       queued=self._backpressure.queued, code=407)
        self._backpressure = None
        self.factory.stats.slow_clients += 1
        self._slow()
        self.dropConnection(abort=True)
        return False

    def _slow(self) -> None:
        """Say goodbye to a client that is cut off for not reading (may never arrive)."""

    @property
    def buffered(self) -> int:
        """Bytes waiting for this client beyond the transport's own buffer (0 if reading)."""
        return self._backpressure.queued if self._backpressure is not None else 0

    @property
    def _sendable(self) -> bool:
        return self.state == WebSocketProtocol.STATE_OPEN

    def send_payload(self, payload: bytes, binary: bool) -> None:
        if self._sendable and self._room_for(len(payload)):
            self.sendMessage(payload, binary)

    def close(self, code: int, reason: str) -> None:
        """Start a close handshake with any protocol close code.

        Autobahn's ``sendClose`` only allows 1000 and 3000-4999; 1001 (going
        away) and 1008 (policy) are the honest codes here.
        """
        if self._sendable:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123], isReply=False)

    def prepare(self, payload: bytes, binary: bool) -> Any:
        return self.factory.prepareMessage(payload, binary)

    def send_prepared(self, prepared: Any) -> None:
        if self._sendable and self._room_for(len(prepared.payloadHybi)):
            self.sendPreparedMessage(prepared)

    def upstream_refused(self, code: int) -> None:
        """Upstream refused the account this client shares: tell it and hang up."""
        self._auth_refused(code)
        self.close(1008, "upstream refused credentials")


class DownstreamProtocol(ClientProtocol):
    """A market-data client: Alpaca's data protocol over the router."""

    _msgpack_only_refusal = False

    def _resolve(self, path: str) -> paths.Endpoint | None:
        return paths.resolve(path, self.factory.default_feed)

    def onConnect(self, request):
        super().onConnect(request)
        self.dialect = DIALECTS[self.endpoint.kind]
        # Options data exists only as MessagePack: no Content-Type means MessagePack
        # (the C# client sends none), an explicit JSON request gets 412.
        if self.endpoint.kind == paths.OPTIONS and self.encoding is codec.JSON:
            if self.content_type and "json" in self.content_type.lower():
                self._msgpack_only_refusal = True
            else:
                self.encoding = codec.MSGPACK
        return None

    def _opened(self) -> None:
        self.send_control(WELCOME)
        if self._msgpack_only_refusal:
            self.send_control(error(412))

    def _request(self, message: Any) -> None:
        if self._msgpack_only_refusal:
            self._bad_input(412, "JSON asked for on a MessagePack-only endpoint")
            return
        try:
            request = self.dialect.parse(message)
        except ProtocolError as refused:
            self._bad_input(refused.code, "refused request")
            return
        if isinstance(request, Auth):
            if self.session is not None:
                self.send_control(error(403))
            else:
                self._authenticate(request.credentials)
        elif self.session is None:
            self.send_control(error(401))
        elif not self._within_limits(request):
            self._bad_input(405, "over the proxy's symbol limits")
        else:
            self.session.router.request(self, request)

    def _undecodable(self, why: str) -> None:
        self._bad_input(400, why)

    def _bad_input(self, code: int, why: str) -> None:
        self._log.info("client {peer} on {path}: {code} ({why})", peer=self.peer_name,
                       path=self.endpoint.path, code=code, why=why)
        self.send_control(error(code))

    def _auth_accepted(self) -> None:
        self.send_control(AUTHENTICATED)

    def _auth_refused(self, code: int) -> None:
        self.send_control(error(code))

    def _deadline_passed(self) -> None:
        self.send_control(error(404))

    def _slow(self) -> None:
        self.sendMessage(self.encoding.control(error(407)), self.encoding.binary)

    # -- called by the router and the session ------------------------------------

    def send_control(self, message: dict) -> None:
        if message["T"] == "error":
            self.factory.stats.errors[message["code"]] += 1
        self.send_payload(self.encoding.control(message), self.encoding.binary)

    def acknowledge(self, state) -> None:
        """The router confirmed a state: send the full ``subscription`` ack."""
        self.send_control(self.dialect.ack(state))

    def refuse(self, code: int) -> None:
        """The router refused a request (an upstream error): pass it on."""
        self._log.info("client {peer} on {path}: request refused upstream with {code}",
                       peer=self.peer_name, path=self.endpoint.path, code=code)
        self.send_control(error(code))


class DownstreamFactory(WebSocketServerFactory):
    """Local clients' websocket server, for one protocol class."""

    protocol = DownstreamProtocol

    def __init__(self, pool: Any, clock: Any, default_feed: str = "iex",
                 auth_timeout: float = 10.0, protocol: type | None = None,
                 limits: Limits = Limits(), clients: set | None = None,
                 origins: frozenset[str] = frozenset(), stats: ProxyStats | None = None,
                 polygon_root: str | None = None) -> None:
        if protocol is not None:
            self.protocol = protocol
        super().__init__(server="alpaca-proxy/%s" % (__version__,))
        self.setProtocolOptions(
            maxMessagePayloadSize=MAX_CLIENT_MESSAGE,
            maxFramePayloadSize=MAX_CLIENT_MESSAGE,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=2,
        )
        use_clock(self, clock)
        self.pool = pool
        self.clock = clock
        self.default_feed = default_feed
        #: The Polygon market served at "/" (Polygon mode), else None.
        self.polygon_root = polygon_root
        self.auth_timeout = auth_timeout
        self.limits = limits
        #: Shared by the proxy's factories, read by the status page and /metrics.
        self.stats = ProxyStats() if stats is None else stats
        #: Web origins allowed to open websockets ("*": any); SDKs send none.
        self.origins = frozenset(origin.rstrip("/").lower() for origin in origins)
        #: Every connected client; factories of one proxy share the set.
        self.clients: set[ClientProtocol] = set() if clients is None else clients

    def origin_allowed(self, origin: str) -> bool:
        return "*" in self.origins or origin.rstrip("/").lower() in self.origins

    def close_all(self, code: int, reason: str) -> None:
        """Close every client's websocket (e.g. 1001 when the proxy stops)."""
        for client in list(self.clients):
            client.close(code, reason)
