"""What every local client connection shares, whatever protocol it speaks.

The auth gate (messages that arrive while a verdict is pending wait for it, in
order), the auth deadline, joining and leaving the upstream session through
the pool, the client's limits (message rate, symbols, buffered bytes), and
sending with backpressure: a client that stops reading is cut off past its
buffer limit and never slows anyone else.  ``ClientProtocol`` implements
``interfaces.IClient``; each stream's protocol (``alpaca_data``,
``alpaca_trading``, ``polygon``) fills in the hooks.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from alpaca_proxy import __version__, codec
from alpaca_proxy.counters import TokenBucket
from alpaca_proxy.credentials import header_credentials
from alpaca_proxy.interfaces import IClient
from alpaca_proxy.logs import short
from alpaca_proxy.net import set_no_delay, write_now, writes_through
from alpaca_proxy.refusal import AUTH_FAILED, INTERNAL, Refused
from alpaca_proxy.streams import Stream
from alpaca_proxy.subscriptions import Change
from alpaca_proxy.timers import use_clock

#: Messages a client may send while its auth verdict is pending.
MAX_BACKLOG = 64
#: Largest message a client may send (thousands of symbols fit easily).
MAX_CLIENT_MESSAGE = 16 << 20
#: Largest message before the client has authenticated (an auth message is ~100 bytes).
MAX_UNAUTHENTICATED_MESSAGE = 16 << 10
#: Largest message while its credentials are being checked (a client authenticating by
#: headers may subscribe at once: ~20,000 symbols fit).
MAX_PENDING_MESSAGE = 256 << 10
#: Frames one message may come in (Python SDKs send 32 KiB fragments: 512 for 16 MiB).
MAX_FRAGMENTS = 1024
#: What a queued pong is charged against the client's buffer: a small frame costs
#: far more memory than its bytes (a buffer entry each).
PONG_COST = 1024


class _AutobahnLog:
    """Autobahn's logger for one client connection, its warnings summarized.

    Autobahn warns once per failed or dropped connection; a client reconnecting to
    send oversized messages would otherwise write a line per attempt.
    """

    __slots__ = ("_log", "_notes")  # one per client

    def __init__(self, log: Any, notes: Any) -> None:
        self._log = log
        self._notes = notes

    def warn(self, format: str, **fields: Any) -> None:
        self._notes.warn("websocket", format, **fields)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


def _is_loopback(host: str) -> bool:
    return host.startswith("127.") or host in ("::1", "localhost")


@implementer(IPushProducer)
class _Backpressure:
    """Told by the transport when a client stops reading; counts what piles up since.

    Twisted pauses its producer once the transport's buffer passes its high-water
    mark; anything written while paused waits in proxy memory.  Past ``limit``
    bytes the client is not keeping up and is cut off, never slowing anyone else.
    """

    __slots__ = ("limit", "paused", "queued", "_drain_waiters")  # one per client

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.paused = False
        self.queued = 0
        #: Deferreds waiting for the client to read again (or go away).
        self._drain_waiters: list[Deferred] = []

    def pauseProducing(self) -> None:
        # May be called again while paused: keep counting from the first pause.
        if not self.paused:
            self.paused, self.queued = True, 0

    def resumeProducing(self) -> None:
        self.paused, self.queued = False, 0
        self._drained()

    def stopProducing(self) -> None:
        self.paused = True
        self._drained()

    def drained(self) -> Deferred:
        """Fires once writes are taken again (at once if they are)."""
        if not self.paused:
            return succeed(None)
        waiter: Deferred = Deferred()
        self._drain_waiters.append(waiter)
        return waiter

    def _drained(self) -> None:
        self._drain_waiters, waiters = [], self._drain_waiters
        for waiter in waiters:
            waiter.callback(None)

    def overflows(self, size: int) -> bool:
        """Account for ``size`` more bytes; True once past the limit."""
        if self.paused:
            self.queued += size
        return self.queued > self.limit


_MISSING = object()

#: Attribute values nearly every open, authenticated connection has (immutable
#: ones only): the class holds them, so connections need not (``_compact``).
_SHARED: dict[str, Any] = {
    "_authenticating": False, "_backlog": None, "_header_credentials": None,
    "_isMessageCompressed": False, "_perMessageCompress": None, "_fragments": 1,
    "autoPingPending": None, "autoPingPendingSent": None, "autoPingPendingSeq": 0,
    "autoPingTimeoutCall": None, "closeHandshakeTimeoutCall": None, "closedByMe": False,
    "connected": 1, "content_type": None, "current_frame": None, "data": b"",
    "droppedByMe": False, "failedByMe": False, "frame_data": None, "http_headers": None,
    "http_request_data": None, "http_request_params": None, "http_response_data": None,
    "http_status_line": None, "inside_message": False, "localCloseCode": None,
    "localCloseReason": None, "message_data": None, "message_is_binary": False,
    "openHandshakeTimeoutCall": None, "remoteCloseCode": None, "remoteCloseReason": None,
    "send_state": 0, "trackedTimings": None, "triggered": False, "wasClean": False,
    "wasCloseHandshakeTimeout": False, "wasMaxFramePayloadSizeExceeded": False,
    "wasMaxMessagePayloadSizeExceeded": False, "wasNotCleanReason": None,
    "wasOpenHandshakeTimeout": False, "wasServerConnectionDropTimeout": False,
    "wasServingFlashSocketPolicyFile": False, "websocket_origin": "",
    "websocket_protocol_in_use": None, "websocket_version": 13,
    "utf8validateIncomingCurrentMessage": True, "_deadline": None, "_verdict": None,
    # The handshake's, dropped once it is over (``onOpen``).
    "_wskey": None, "http_request_host": None, "http_request_path": None,
    "http_request_uri": None, "websocket_protocols": (), "websocket_extensions": (),
    "websocket_extensions_in_use": (),
}


class _SendQueue(list):
    """Autobahn's queue for chopped or synchronous sends (which the proxy never
    asks for), as an empty list: 56 bytes where a deque takes 600."""

    def popleft(self) -> Any:
        return self.pop(0)


@implementer(IClient)
class ClientProtocol(WebSocketServerProtocol):
    """A local client connection; subclasses speak their stream's protocol
    through the hooks below."""

    _log = Logger()
    # onClose may run without onConnect/onOpen (a failed handshake).
    session = None
    _deadline = None
    stream = None
    peer_name = None
    encoding = codec.JSON
    _rate = None
    messages_sent = 0
    connected_at = 0.0
    #: Numbered by the proxy when it opens, for the status page.
    client_id = 0

    # -- hooks -------------------------------------------------------------------

    def _resolve(self, path: str) -> Stream | None:
        """The upstream stream a request path stands for, or None (HTTP 404)."""
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

    def _auth_refused(self, code: int, detail: str = "") -> None:
        """Tell the client it is not authenticated: why (``code``), and for a fault
        (upstream unreachable) what went wrong."""
        raise NotImplementedError

    def _deadline_passed(self) -> None:
        """Say why the connection is about to close for lack of auth."""

    # -- websocket events ------------------------------------------------------

    def onConnect(self, request):
        proxy = self.factory.proxy
        self.log = _AutobahnLog(type(self).log, proxy.notes)
        self.peer_name = short(request.peer)
        self.peer_host = getattr(self.transport.getPeer(), "host", "?")
        stream = self._resolve(request.path)
        if stream is None:
            self._refuse_handshake(404, "unknown-path", "refusing {peer}: unknown path {path}",
                                   path=short(request.path))
            raise ConnectionDeny(ConnectionDeny.NOT_FOUND, "unknown stream path")
        origin = request.headers.get("origin")
        if origin is not None and not proxy.origin_allowed(origin):
            # A web page in the user's browser must not drive the local proxy.
            self._refuse_handshake(403, "origin", "refusing {peer}: websocket from web origin"
                                   " {origin} not allowed", origin=short(origin))
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        limits = proxy.limits
        if limits.clients and len(proxy.clients) >= limits.clients:
            self._refuse_handshake(503, "client-limit", "refusing {peer}: {count} clients"
                                   " connected, the limit (--max-clients)",
                                   count=len(proxy.clients))
            raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, "too many clients")
        # Per address, for remote peers: every local algorithm shares the loopback
        # address, and --max-clients bounds those.
        if (limits.clients_per_address and not _is_loopback(self.peer_host)
                and proxy.addresses[self.peer_host] >= limits.clients_per_address):
            self._refuse_handshake(503, "address-limit", "refusing {peer}: {count} clients"
                                   " connected from its address, the limit"
                                   " (--max-clients-per-address)",
                                   count=proxy.addresses[self.peer_host])
            raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, "too many clients")
        self._rate = TokenBucket(proxy.clock, limits.messages_per_second)
        self.stream = stream
        self.content_type = request.headers.get("content-type")
        self.encoding = codec.encoding_for(self.content_type)
        self._header_credentials = header_credentials(request.headers)
        self._authenticating = False
        #: Requests that came while the auth verdict was awaited (made when needed).
        self._backlog: deque[Any] | None = None
        # Until it authenticates, a client may hold very little of the proxy's memory.
        self.maxMessagePayloadSize = MAX_UNAUTHENTICATED_MESSAGE
        return None

    def _refuse_handshake(self, status: int, kind: str, format: str, **fields: Any) -> None:
        """Count and note a refused upgrade (summarized when it repeats)."""
        self.factory.proxy.stats.refused[status] += 1
        self.factory.proxy.notes.warn(kind, format, peer=self.peer_name, status=status, **fields)

    def onOpen(self):
        # The handshake is over: Autobahn keeps its request and response for good
        # (about 1.7 KiB a client); nothing reads them after this.
        self.http_headers = self.http_request_params = self.http_status_line = None
        self.http_request_data = self.http_response_data = self._wskey = None
        self.http_request_host = self.http_request_path = self.http_request_uri = None
        self.websocket_protocols = self.websocket_extensions = ()
        self.websocket_extensions_in_use = ()
        try:
            proxy = self.factory.proxy
            proxy.clients.add(self)
            self.client_id = next(proxy.client_ids)
            proxy.addresses[self.peer_host] += 1
            self._counted = True
            self.connected_at = proxy.clock.seconds()
            set_no_delay(self.transport)
            if proxy.outbox is not None and writes_through(self.transport):
                self._outbox = proxy.outbox
            self._watch_backpressure()
            self._opened()
            self._deadline = proxy.clock.callLater(proxy.auth_timeout, self._auth_timed_out)
            if self._header_credentials is not None:
                self._authenticate(self._header_credentials)
        except Exception:
            self._log.failure("opening client {peer}", peer=self.peer_name)
            self.dropConnection(abort=True)

    def onMessageBegin(self, isBinary):
        self._fragments = 0
        super().onMessageBegin(isBinary)

    def onMessageFrameBegin(self, length):
        # Each frame costs a list entry however small it is: bound their number.
        self._fragments = getattr(self, "_fragments", 0) + 1
        if self._fragments > MAX_FRAGMENTS:
            self.factory.proxy.notes.warn("fragments", "closing {peer}: a message in more"
                                          " than {limit} frames", peer=self.peer_name,
                                          limit=MAX_FRAGMENTS)
            self._fail_connection(1009, "message in too many frames")
            return
        super().onMessageFrameBegin(length)

    def onPing(self, payload):
        # A pong is queued like any frame: one that never reads is cut off the same way.
        if self._sendable and self._room_for(max(len(payload) + 2, PONG_COST)):
            self.sendPong(payload)

    def onMessage(self, payload, isBinary):
        limit = self.factory.proxy.limits.symbols_per_request or MAX_CLIENT_MESSAGE
        try:
            message = codec.decode_client(payload, limit)
        except codec.DecodeError as failure:
            self._undecodable("undecodable payload: %s" % (failure,))
            return
        messages = message if isinstance(message, list) and message else [message]
        for each in messages:
            if not self._sendable:
                break  # closed (rate limit, slow, refused): the rest is not worth the work
            self._handle(each)

    _counted = False

    def onClose(self, wasClean, code, reason):
        proxy = self.factory.proxy
        proxy.clients.discard(self)
        if self._counted:
            self._counted = False
            proxy.addresses[self.peer_host] -= 1
            if not proxy.addresses[self.peer_host]:
                del proxy.addresses[self.peer_host]
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        if self._verdict is not None and not self._verdict.called:
            self._verdict.cancel()  # nobody waits for it now: the session may retire
        if self._refusal is not None and self._refusal.active():
            self._refusal.cancel()
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        if self._backpressure is not None:
            self._backpressure.stopProducing()  # nobody waits for this client to read
        if self.session is not None:
            self.factory.proxy.pool.leave(self.session, self)
            self.session = None
            self._log.info("client {peer} left {path}: code={code}", peer=self.peer_name,
                           path=self.stream.path, code=code)

    # -- the auth gate -----------------------------------------------------------

    def _handle(self, message: Any) -> None:
        if not self._rate.allow():
            if self._sendable:
                self.factory.proxy.notes.warn(
                    "rate", "closing {peer} on {path}: more than {rate} messages a second",
                    peer=self.peer_name, path=self.stream.path,
                    rate=self.factory.proxy.limits.messages_per_second)
                self.close(1008, "too many messages")
            return
        if self._authenticating:
            if self._backlog is None:
                self._backlog = deque()
            if len(self._backlog) >= MAX_BACKLOG:
                self._undecodable("too many messages before the auth verdict")
                return
            self._backlog.append(message)
            return
        self._request(message)

    _verdict = None

    def _authenticate(self, credentials) -> None:
        self._authenticating = True
        self.maxMessagePayloadSize = max(self.maxMessagePayloadSize, MAX_PENDING_MESSAGE)
        verdict = self._verdict = self.factory.proxy.pool.authenticate(self.stream, credentials)
        verdict.addCallbacks(self._authenticated, self._auth_failed)
        verdict.addErrback(lambda f: self._log.failure("auth of {peer}", f, peer=self.peer_name))

    def _authenticated(self, session) -> None:
        self._authenticating = False
        if not self._sendable:
            return
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self.session = session
        self.maxMessagePayloadSize = MAX_CLIENT_MESSAGE
        self.factory.proxy.pool.join(session, self)
        self._log.info("client {peer} authenticated on {path} as {key}", peer=self.peer_name,
                       path=self.stream.path, key=session.credentials.key)
        self._auth_accepted()
        self._drain()
        self._compact()

    def _compact(self) -> None:
        """Keep only what this connection does not share with the others.

        An authenticated client may stay connected, idle, for days; Autobahn
        gives each connection about 115 attributes, most of them at the same
        values for every open connection (copies of the factory's options,
        flags, empty slots).  Those values live on the class (``_SHARED`` and
        the factory's options, see ``ClientFactory``); the instance drops its
        copies and its attribute table is rebuilt at the size of what is left.
        Anything Autobahn sets later goes back on the instance as usual.
        """
        self._deadline = self._verdict = None  # done with: cancelled, fired
        if self.send_queue is not None and not self.send_queue:
            self.send_queue = _SendQueue()
        attributes = self.__dict__
        shared = type(self)
        for name in _SHARED.keys() | set(self.CONFIG_ATTRS):
            if name in attributes:
                value, default = attributes[name], getattr(shared, name, _MISSING)
                if value is default or (type(value) is type(default) and value == default):
                    del attributes[name]
        self.__dict__ = dict(attributes.items())

    def _auth_failed(self, failure) -> None:
        if failure.check(CancelledError):  # the client left first
            self._authenticating = False
            return
        detail = ""
        if failure.check(Refused):
            code, detail = failure.value.code, failure.value.detail
        else:
            self._log.failure("auth of {peer}", failure, peer=self.peer_name)
            code = INTERNAL
        delay = self.factory.proxy.auth_failed(self.peer_host) if code == AUTH_FAILED else 0
        if delay:
            # Guessing is slowed per address; messages keep waiting behind the verdict.
            self._refusal = self.factory.proxy.clock.callLater(delay, self._refuse_auth, code)
        else:
            self._refuse_auth(code, detail)

    _refusal = None

    def _refuse_auth(self, code: int, detail: str = "") -> None:
        self._refusal = None
        self._authenticating = False
        self.maxMessagePayloadSize = MAX_UNAUTHENTICATED_MESSAGE
        if not self._sendable:
            return
        self.factory.proxy.notes.warn("auth-refused", "client {peer} on {path}: auth refused"
                                      " with {code} {detail}", peer=self.peer_name,
                                      path=self.stream.path, code=code, detail=detail)
        self._auth_refused(code, detail)
        if detail:  # a fault, not a verdict: the client should come back later
            self.close(1011, "upstream unreachable")
            return
        self._drain()

    def _drain(self) -> None:
        while self._backlog and not self._authenticating:
            self._request(self._backlog.popleft())

    def _auth_timed_out(self) -> None:
        if self.session is None:
            self.factory.proxy.notes.warn("auth-timeout", "client {peer}: auth timeout",
                                          peer=self.peer_name)
            self._deadline_passed()
            self.close(1000, "auth timeout")

    def _within_limits(self, change: Change) -> bool:
        """Whether a data client's (un)subscribe stays within the proxy's symbol limits.

        Every symbol a client names costs the proxy work (parsing, books, upstream's
        ack): clients of one address naming them faster than ``2 ×
        --max-request-symbols`` a second are read more slowly, so they cannot take
        the reactor from the others (reconnecting does not reset the budget).
        """
        self._pace(change.size)
        limits = self.factory.proxy.limits
        per_request = limits.symbols_per_request
        if per_request and change.size > per_request:
            return False
        # Requests waiting behind a pending one count too: pipelining cannot get
        # past the limits (one more full-size request may wait).
        if per_request and self.session.queued_symbols(self) + change.size > 2 * per_request:
            return False
        if limits.symbols_per_client and change.action == "subscribe":
            return self.session.size_after(self, change) <= limits.symbols_per_client
        return True

    _reading_paused = False
    _resume = None

    def _pace(self, symbols: int) -> None:
        wait = self.factory.proxy.symbol_budget(self.peer_host).take(symbols)
        if wait > 0 and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pauseProducing()
            self._resume = self.factory.proxy.clock.callLater(wait, self._resume_reading)

    def _resume_reading(self) -> None:
        self._resume = None
        self._reading_paused = False
        if self.transport is not None and self._sendable:
            self.transport.resumeProducing()

    # -- sending -----------------------------------------------------------------

    _backpressure: _Backpressure | None = None
    #: Where data frames wait for the end of the turn (``outbox``), if this
    #: connection can send them itself (``net.writes_through``); else None.
    _outbox: Any = None

    def write_frames(self, frames: list[bytes]) -> None:
        """Send data frames that waited in the outbox, in one ``send`` if it can."""
        write_now(self.transport, frames[0] if len(frames) == 1 else b"".join(frames))

    def sendData(self, data, sync=False, chopsize=None):
        # Every other write (acks, errors, pings, close) goes behind waiting data.
        if self._outbox is not None:
            frames = self._outbox.take(self)
            if frames:
                self.write_frames(frames)
        super().sendData(data, sync, chopsize)

    def _watch_backpressure(self) -> None:
        # twisted.web's HTTPChannel stays registered as the transport's producer
        # after Autobahn takes the connection over from it.
        if getattr(self.transport, "producer", None) is not None:
            self.transport.unregisterProducer()
        self._backpressure = _Backpressure(self.factory.proxy.limits.buffer_bytes)
        self.transport.registerProducer(self._backpressure, True)

    def _room_for(self, size: int) -> bool:
        """False (and the client is being cut off) if it stopped reading."""
        if self._backpressure is None or not self._backpressure.overflows(size):
            return True
        self.factory.proxy.notes.warn("slow", "dropping slow client {peer} on {path}: {queued}"
                                      " bytes queued", peer=self.peer_name,
                                      path=self.stream.path,
                                      queued=self._backpressure.queued, code=407)
        self._backpressure = None
        self.factory.proxy.stats.slow_clients += 1
        self._slow()
        self.dropConnection(abort=True)
        return False

    def _slow(self) -> None:
        """Say goodbye to a client that is cut off for not reading (may never arrive)."""

    def drained(self) -> Deferred:
        """Fires once the client's connection takes writes again (at once if it does,
        or once it is gone)."""
        if self._backpressure is None:
            return succeed(None)
        return self._backpressure.drained()

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
        if self.state != WebSocketProtocol.STATE_OPEN:
            return
        frame = prepared.payloadHybi
        backpressure = self._backpressure
        if backpressure is not None and backpressure.paused and not self._room_for(len(frame)):
            return
        if self._perMessageCompress is None and not self.send_queue:
            # What Autobahn's sendPreparedMessage does, without the per-call cost of
            # formatting its debug line's arguments (a fifth of a write's time).
            if self._outbox is not None:
                self._outbox.put(self, frame)
            else:
                self.transport.write(frame)
        else:
            self.sendPreparedMessage(prepared)

    def account_refused(self, code: int) -> None:
        """Upstream refused the account this client shares: tell it and hang up."""
        self._auth_refused(code)
        self.close(1008, "upstream refused credentials")

    def notice(self, message: dict) -> None:
        """A status upstream addressed to everyone; streams that have none ignore it."""

    def acknowledge(self, state: Any) -> None:
        raise NotImplementedError

    def refuse(self, code: int) -> None:
        raise NotImplementedError


for _name, _value in _SHARED.items():
    setattr(ClientProtocol, _name, _value)


def _as_attribute(value: Any) -> Any:
    """A value read the same from the class as from an instance (functions unbound)."""
    return staticmethod(value) if callable(value) and not isinstance(value, type) else value


class ClientFactory(WebSocketServerFactory):
    """Local clients' websocket server for one protocol class, over one ``Proxy``."""

    def __init__(self, proxy: Any, protocol: type) -> None:
        self.protocol = protocol
        super().__init__(server="alpaca-proxy/%s" % (__version__,))
        self.noisy = False  # no "Starting factory" line per connection
        limits = proxy.limits
        self.setProtocolOptions(
            maxMessagePayloadSize=MAX_CLIENT_MESSAGE,
            maxFramePayloadSize=MAX_CLIENT_MESSAGE,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=2,
            # A client breaking a limit gets a close frame saying why (1009 ...), then
            # the connection is dropped if it does not answer within 2 s.
            failByDrop=False,
            # A client that vanished (no FIN: a dead host, a dropped NAT entry) is
            # noticed by its missing pong and dropped.
            autoPingInterval=limits.ping_interval,
            autoPingTimeout=limits.ping_timeout,
        )
        use_clock(self, proxy.clock)
        self.proxy = proxy
        # The options as class attributes of a protocol class of this factory's own:
        # Autobahn copies onto each connection only options its class lacks.
        self.protocol = type(protocol.__name__, (protocol,), {
            "__module__": protocol.__module__, "__qualname__": protocol.__qualname__,
            **{name: _as_attribute(getattr(self, name)) for name in protocol.CONFIG_ATTRS}})
