"""The upstream side of a session: a link, and the websocket link it is today.

A *link* is one account's conversation with a provider's stream, behind a small
interface (``ILink``), reporting to its session (``ILinkReceiver``): it comes up
(authenticated), takes subscription changes and answers each one in order, with
an ack or a refusal, delivers data frames, and goes down.  The session keeps
clients' books and fans data out; it never sees a socket.

``WebSocketLink`` is the link to a live provider: a ``ClientService`` keeps the
connection (backoff with jitter, counting sessions that connected but never
authenticated), pings judge it alive, and stopping it closes the websocket with
a close handshake so the account's connection slot frees at once.  Each
provider's handshake lives in a subclass (``alpaca_data``, ``alpaca_trading``,
``polygon``).  A replayed recording (``replay``) implements the same
interface without a socket to a provider.
"""

from __future__ import annotations

import random
from typing import Any, Callable

from attrs import frozen
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.application.internet import ClientService
from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from alpaca_proxy import __version__, codec
from alpaca_proxy.credentials import Credentials
from alpaca_proxy.net import endpoint_for, set_no_delay
from alpaca_proxy.streams import Stream
from alpaca_proxy.timers import use_clock


class ILink(Interface):
    """One account's connection to one upstream stream, as its session uses it."""

    ready = Attribute("True while upstream has accepted the account on this link.")

    def send_change(action, keys):
        """Ask upstream to ``subscribe``/``unsubscribe`` (channel, symbol) keys.

        Each change is answered, in the order sent, by exactly one
        ``acked`` or ``request_refused`` on the receiver, unless the link
        goes down first (then none of the outstanding ones is).
        """

    def drop():
        """Abandon the current connection (it went mute); the link comes up again."""

    def close():
        """Close for good; a Deferred that fires once the connection is gone."""


class ILinkReceiver(Interface):
    """What a link reports to its session."""

    def link_connected():
        """A connection is open; the handshake (authentication) is under way."""

    def link_ready():
        """Upstream accepted the account; it holds no subscription yet."""

    def link_refused(code):
        """Upstream refused the account for good (402, 409 ...): the link stops."""

    def link_down(was_ready):
        """The connection is gone; the link will come up again unless stopped."""

    def link_failed(cause):
        """An attempt failed before upstream accepted the account (DNS, TCP, TLS, HTTP
        status at the handshake): ``cause`` in words.  The link keeps trying."""


class IDataReceiver(ILinkReceiver):
    """A market-data session: acks, refusals and data frames."""

    def acked(keys):
        """Upstream's whole state (a set of keys), answering the oldest change."""

    def request_refused(code):
        """Upstream refused the oldest change with ``code``."""

    def received(elements, size):
        """A frame of ``size`` bytes and its data messages (``codec.Element``; maybe none)."""

    def upstream_error(message):
        """An error status upstream addressed to everyone (passed on to clients)."""


class IEventReceiver(ILinkReceiver):
    """An account-wide event stream (trading): each event as upstream sent it."""

    def event(stream, message, payload, binary):
        """One event: its stream name, decoded message, and upstream's bytes and frame type."""


def backoff(attempt: int, rng: random.Random, initial: float = 1.0, cap: float = 30.0) -> float:
    """Exponential backoff with jitter: about 1, 2, 4 ... seconds, capped, never 0."""
    ceiling = min(cap, initial * 2 ** max(0, attempt - 1))
    return ceiling * (0.5 + rng.random() / 2)


@frozen
class Liveness:
    """How an upstream connection is judged alive.

    Pings every ``ping_interval`` seconds, dropped if no pong within
    ``ping_timeout`` (generous: Alpaca's pongs run late under load).  A data
    stream with subscriptions but no data for ``silence_timeout`` seconds is
    taken for mute and reconnected (0: never; quiet feeds are legitimate).
    """

    ping_interval: float = 10.0
    ping_timeout: float = 180.0
    silence_timeout: float = 0.0


class _LinkProtocol(WebSocketClientProtocol):
    """Websocket events in, calls on the link out."""

    #: The transport's own reason for the loss (a TLS verification failure, say):
    #: Autobahn's close reason only says the peer dropped the connection.
    cause = None

    def connectionMade(self):
        super().connectionMade()
        set_no_delay(self.transport)

    def onOpen(self):
        self.factory.link._opened(self)

    def dataReceived(self, data):
        # Autobahn's formats a debug line's arguments first, at every read.
        self._dataReceived(data)

    def onMessageEnd(self):
        # Autobahn's own also fires its "message" observers (none here) through a
        # Deferred per message: a tenth of a frame's cost on the way in.
        if not self.failedByMe:
            self.onMessage(b"".join(self.message_data), self.message_is_binary)
        self.message_data = None

    def onMessage(self, payload, isBinary):
        link = self.factory.link
        if link.tap is not None:
            link.tap(payload, isBinary)
        link._on_frame(payload, isBinary)

    def connectionLost(self, reason):
        self.cause = reason
        super().connectionLost(reason)

    def onClose(self, wasClean, code, reason):
        self.factory.link._closed(self, wasClean, code, reason)


class _LinkFactory(WebSocketClientFactory):
    """The link's upgrade headers, our user agent, timers on the link's clock."""

    protocol = _LinkProtocol

    def __init__(self, link: "WebSocketLink", url: str, reactor: Any) -> None:
        super().__init__(url, headers=dict(link.upgrade_headers),
                         useragent="alpaca-proxy/%s" % (__version__,), reactor=reactor)
        self.link = link
        self.noisy = False  # no "Starting factory" line per connection attempt
        use_clock(self, link.clock)
        self.setProtocolOptions(
            maxMessagePayloadSize=0,
            maxFramePayloadSize=0,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=2,
            # A half-open connection answers no ping: drop it and reconnect.
            autoPingInterval=link.liveness.ping_interval,
            autoPingTimeout=link.liveness.ping_timeout,
        )


@implementer(IStreamClientEndpoint)
class _ReportingEndpoint:
    """An endpoint that tells the link about failed connection attempts."""

    def __init__(self, endpoint: Any, link: "WebSocketLink") -> None:
        self._endpoint = endpoint
        self._link = link

    def connect(self, factory: Any) -> Deferred:
        def report(reason: Any) -> Any:
            self._link._failed(reason)
            return reason

        return self._endpoint.connect(factory).addErrback(report)


@implementer(ILink)
class WebSocketLink(MultiService):
    """A reconnecting websocket to a provider, closed with a handshake on stop.

    Subclasses speak the provider's protocol: ``_on_frame`` handles a frame,
    ``_on_open``/``_on_closed`` see the connection come and go, and they call
    ``_authenticated`` or ``_refused`` with upstream's verdict.
    """

    _log = Logger()
    #: Headers of the upgrade request upstream.
    upgrade_headers: dict[str, str] = {}
    #: Called with each frame as it arrives, before it is handled (``--record``).
    tap: Callable[[bytes, bool], None] | None = None

    def __init__(self, receiver: Any, stream: Stream, credentials: Credentials, url: str,
                 reactor: Any, clock: Any, liveness: Liveness = Liveness(),
                 trust_root: Any = None, rng: random.Random | None = None) -> None:
        super().__init__()
        self.receiver = receiver
        self.stream = stream
        self.credentials = credentials
        self.url = url
        self.clock = clock
        self.liveness = liveness
        self.ready = False
        self._rng = rng or random.Random()
        self._protocol: _LinkProtocol | None = None
        self._bad_sessions = 0
        self._closed_waiters: list[Deferred] = []
        self._client = ClientService(
            _ReportingEndpoint(endpoint_for(reactor, url, trust_root), self),
            _LinkFactory(self, url, reactor),
            retryPolicy=self.retry_delay,
            clock=clock,
        )
        self._client.setServiceParent(self)

    def __repr__(self) -> str:
        return "<%s %s key=%s>" % (type(self).__name__, self.stream.path, self.credentials.key)

    # -- for subclasses --------------------------------------------------------

    def encode(self, message: dict) -> tuple[bytes, bool]:
        """A message to upstream as (payload, is_binary)."""
        return codec.to_json(message), False

    def _on_open(self) -> None:
        """The websocket is open."""

    def _on_frame(self, payload: bytes, binary: bool) -> None:
        raise NotImplementedError

    def _on_closed(self) -> None:
        """The websocket is gone (cancel timers, forget what it held)."""

    def send(self, message: dict) -> None:
        """Send a message upstream; dropped if the websocket is closing or gone.

        A change dropped here is answered from local state (the ack deadline, or
        the link going down) and sent again with the union once the link is back.
        """
        if self.connected:
            self._protocol.sendMessage(*self.encode(message))

    @property
    def connected(self) -> bool:
        """The websocket is open (not closing: a close frame may come long before TCP goes)."""
        return (self._protocol is not None
                and self._protocol.state == WebSocketProtocol.STATE_OPEN)

    def _authenticated(self) -> None:
        self.ready = True
        self._bad_sessions = 0
        self._log.info("upstream {path} authenticated ({key})", path=self.stream.path,
                       key=self.credentials.key)
        self.receiver.link_ready()

    def _refused(self, code: int, text: str = "") -> None:
        self._log.error("upstream {path} refused credentials {key}: {code} {text}",
                        path=self.stream.path, key=self.credentials.key, code=code, text=text)
        self.receiver.link_refused(code)

    # -- for ClientService -----------------------------------------------------

    def retry_delay(self, attempt: int) -> float:
        """ClientService's retry policy.

        ClientService counts only TCP failures and resets after every connect, so
        sessions that connected but never authenticated also make the delay grow.
        """
        return backoff(max(attempt, self._bad_sessions), self._rng)

    # -- ILink -----------------------------------------------------------------

    def send_change(self, action: str, keys: list[tuple[str, str]]) -> None:
        raise NotImplementedError

    def drop(self) -> None:
        if self._protocol is not None:
            self._protocol.dropConnection(abort=True)

    def close(self) -> Deferred:
        """Close the websocket with a close handshake; fires when it is gone."""
        if self._protocol is None:
            return succeed(None)
        waiter: Deferred = Deferred()
        self._closed_waiters.append(waiter)
        self._protocol.sendClose(1000, "alpaca-proxy closing")
        return waiter

    def stopService(self) -> Deferred:
        closing = self.close()
        timeout = self.clock.callLater(3, closing.cancel)

        def stop(_: Any) -> Deferred:
            if timeout.active():
                timeout.cancel()
            return MultiService.stopService(self)

        return closing.addBoth(stop)

    # -- from the protocol -----------------------------------------------------

    def _opened(self, protocol: _LinkProtocol) -> None:
        self._protocol = protocol
        self._log.info("upstream {path} connected ({key})", path=self.stream.path,
                       key=self.credentials.key)
        self.receiver.link_connected()
        self._on_open()

    def _failed(self, reason: Any) -> None:
        """A connection attempt failed before any protocol ran (DNS, TCP).

        ClientService counts these for the backoff itself; this only says so.
        """
        if reason.check(CancelledError, ConnectingCancelledError) or not self.running:
            return  # stopped while connecting: nothing went wrong
        cause = reason.getErrorMessage()
        self._log.warn("upstream {path} unreachable ({key}): {reason}", path=self.stream.path,
                       key=self.credentials.key, reason=cause)
        self.receiver.link_failed("cannot reach %s: %s" % (self.url, cause))

    def _closed(self, protocol: _LinkProtocol, clean: bool, code: Any, reason: Any) -> None:
        if protocol is not self._protocol and self._protocol is not None:
            return
        was_ready, self.ready = self.ready, False
        self._protocol = None
        self._on_closed()
        if was_ready:
            self._bad_sessions = 0
        else:
            self._bad_sessions += 1
        cause = protocol.cause.getErrorMessage() if protocol.cause is not None else ""
        self._log.info(
            "upstream {path} lost ({key}): clean={clean} code={code} reason={reason}"
            " cause={cause}", path=self.stream.path, key=self.credentials.key, clean=clean,
            code=code, reason=reason, cause=cause)
        self.receiver.link_down(was_ready)
        if not was_ready and not self._closed_waiters:  # an attempt failed, not a stop
            detail = cause or (reason if isinstance(reason, str) and reason else "")
            self.receiver.link_failed("%s: connection closed before authenticating%s"
                                      % (self.url, ": " + detail if detail else ""))
        self._closed_waiters, waiters = [], self._closed_waiters
        for waiter in waiters:
            waiter.callback(None)


class DataLink(WebSocketLink):
    """A market-data link: frames split into messages, control ones handled here."""

    @staticmethod
    def split(payload: bytes) -> list[codec.Element]:
        """A frame's messages (``codec.DecodeError`` if it is not one)."""
        raise NotImplementedError

    @staticmethod
    def is_control(element: codec.Element) -> bool:
        """Whether a message is the protocol's own (welcome, auth, acks, errors), not data."""
        raise NotImplementedError

    @classmethod
    def control_of(cls, elements: list[codec.Element]) -> list[codec.Element]:
        """The frame's control messages, in order (usually none)."""
        return [element for element in elements if cls.is_control(element)]

    def _control(self, message: dict) -> None:
        raise NotImplementedError

    def _on_frame(self, payload: bytes, binary: bool) -> None:
        try:
            elements = self.split(payload)
        except codec.DecodeError as failure:
            self._log.warn("upstream {path} sent an undecodable frame: {error}",
                           path=self.stream.path, error=str(failure))
            return
        control = self.control_of(elements)
        if control:
            for element in control:
                self._control(element.message)
            elements = [element for element in elements if not self.is_control(element)]
        self.receiver.received(elements if self.ready else [], len(payload))
