"""Sessions: one account on one upstream stream, and the local clients sharing it.

A session sits between its link (the upstream side, ``link.ILink``) and its
clients (``interfaces.IClient``).  It answers the pool's question (has upstream
accepted this account?), keeps the counters the status page shows, and for
market data keeps the router's books: clients' requests go to the router, the
router's changes to the link, the link's acks and frames back to the router
and, through ``fanout``, to the clients.  It never writes to a client itself.

States: ``connecting``, ``authenticating``, ``ready``, ``unreachable`` (the last
attempt failed; ``last_error`` says why), ``refused``.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from alpaca_proxy import codec, fanout
from alpaca_proxy.books import OrderBooks
from alpaca_proxy.counters import RateMeter
from alpaca_proxy.credentials import Credentials
from alpaca_proxy.interfaces import IDataSession, ISession
from alpaca_proxy.refusal import INTERNAL, Refused
from alpaca_proxy.router import Router
from alpaca_proxy.streams import Stream
from alpaca_proxy.subscriptions import Change, Key, State
from alpaca_proxy.upstream.link import IDataReceiver

#: Seconds a client's request waits for upstream's ack before it is answered from
#: local state (the Go SDK waits 3 s for an ack, then gives up on the connection).
ACK_DEADLINE = 2.5
#: Upstream (un)subscribe messages per second a session never exceeds on average,
#: and the burst it may send at once.  The router already sends nothing while a
#: request is in flight, so this only bites when upstream answers very fast and
#: clients churn, or when a large union goes up in many chunks.
CHANGES_PER_SECOND = 20.0
CHANGE_BURST = 10

_NONE: dict = {}


@implementer(ISession)
class Session:
    """What every session shares: verdicts, state, counters, closing."""

    _log = Logger()

    def __init__(self, stream: Stream, credentials: Credentials, clock: Any) -> None:
        self.stream = stream
        self.credentials = credentials
        self.clock = clock
        #: The upstream side, set by the pool right after the session is made.
        self.link: Any = None
        self.state = "connecting"
        #: True once upstream accepted these credentials on any connection.
        self.verified = False
        #: The fatal error code upstream answered auth with, if any.
        self.refusal: int | None = None
        self.reconnects = 0
        self.on_refused: Callable[["Session", int], None] | None = None
        self._verdict_waiters: list[Deferred] = []
        self._down_waiters: list[Deferred] = []
        #: Clients waiting for this session's verdict (they keep it from retiring).
        self.waiting = 0
        #: Why the last attempt failed (None once upstream accepted the account).
        self.last_error: str | None = None
        #: With no account configured for it, upstream alone can accept the pair: while
        #: it cannot be reached, waiting clients are told why instead of timing out.
        self.upstream_judges = False
        #: For the status page and /metrics.
        self.incoming = RateMeter()
        self.bytes_in = 0
        self.messages_out = 0
        self.bytes_out = 0
        self.ready_since: float | None = None
        #: When this session last stopped being ready (or was created).
        self.down_since: float = clock.seconds()

    def __repr__(self) -> str:
        return "<%s %s key=%s %s>" % (type(self).__name__, self.stream.path,
                                      self.credentials.key, self.state)

    # -- for the pool and downstream protocols ---------------------------------

    def verdict(self) -> Deferred:
        """Fires once upstream accepted the credentials, or fails with ``Refused``."""
        if self.verified:
            return succeed(None)
        if self.refusal is not None:
            return Deferred.fromFailure(Refused(self.refusal))
        if self.upstream_judges and self.state == "unreachable":
            return Deferred.fromFailure(self._unreachable())
        waiter: Deferred = Deferred()
        self._verdict_waiters.append(waiter)
        return waiter

    @property
    def clients(self) -> list[Any]:
        raise NotImplementedError

    @property
    def idle(self) -> bool:
        """No client is attached or waiting to be."""
        return not self.clients and not self.waiting

    @property
    def subscription_count(self) -> int:
        """What this session holds upstream (channel/symbol pairs)."""
        return 0

    def attach(self, client: Any) -> None:
        raise NotImplementedError

    def detach(self, client: Any) -> None:
        raise NotImplementedError

    def next_disconnect(self) -> Deferred:
        """Fires when the current (or next) upstream connection is lost."""
        waiter: Deferred = Deferred()
        self._down_waiters.append(waiter)
        return waiter

    # -- ILinkReceiver -----------------------------------------------------------

    def link_connected(self) -> None:
        self.state = "authenticating"

    def link_failed(self, cause: str) -> None:
        self.last_error = cause
        if self.state in ("ready", "refused"):
            return
        self.state = "unreachable"
        if self.upstream_judges and not self.verified:
            self._verdict_waiters, waiters = [], self._verdict_waiters
            for waiter in waiters:
                if not waiter.called:
                    waiter.errback(self._unreachable())

    def _unreachable(self) -> Refused:
        return Refused(INTERNAL, "upstream unreachable: %s" % (self.last_error,))

    def link_ready(self) -> None:
        self.last_error = None
        self.state = "ready"
        self.ready_since = self.clock.seconds()
        self.verified = True
        self._verdict_waiters, waiters = [], self._verdict_waiters
        for waiter in waiters:
            if not waiter.called:  # a client that left cancelled it
                waiter.callback(None)
        self._ready()

    def link_refused(self, code: int) -> None:
        self.state = "refused"
        self.refusal = code
        # The pool forgets this session first: a pair waiting for this verdict
        # tries again at once and must find the key id free.
        if self.on_refused is not None:
            self.on_refused(self, code)
        self._verdict_waiters, waiters = [], self._verdict_waiters
        for waiter in waiters:
            if not waiter.called:
                waiter.errback(Refused(code))

    def link_down(self, was_ready: bool) -> None:
        self.ready_since = None
        if self.state not in ("refused", "unreachable"):
            self.state = "connecting"
        if was_ready:
            self.down_since = self.clock.seconds()
            self.reconnects += 1
        self._down(was_ready)
        self._down_waiters, waiters = [], self._down_waiters
        for waiter in waiters:
            waiter.callback(None)

    # -- for subclasses ------------------------------------------------------------

    def _ready(self) -> None:
        """Upstream accepted the account (again)."""

    def _down(self, was_ready: bool) -> None:
        """The link went down."""


@implementer(IDataReceiver, IDataSession)
class DataSession(Session):
    """A market-data session: the router's books over one link, and the fan-out.

    Crypto order books are kept from upstream's ``orderbooks`` messages so that
    a client joining a book upstream already streams first gets it whole.
    """

    def __init__(self, stream: Stream, credentials: Credentials, clock: Any,
                 dialect: Any, silence_timeout: float = 0.0) -> None:
        super().__init__(stream, credentials, clock)
        self.dialect = dialect
        self.router = Router(on_join=self._joined)
        self.books = OrderBooks()
        self._silence_timeout = silence_timeout
        self._last_data = 0.0
        self._silence_check: Any = None
        self._ack_deadline: Any = None
        #: Changes the router sent that wait for the pace (a token bucket).
        self._outbox: deque[tuple[str, list[Key]]] = deque()
        self._tokens = float(CHANGE_BURST)
        self._tokens_at = clock.seconds()
        self._pacer: Any = None

    # -- for clients -------------------------------------------------------------

    @property
    def clients(self) -> list[Any]:
        return list(self.router.clients)

    @property
    def subscription_count(self) -> int:
        return len(self.router.wanted)

    def attach(self, client: Any) -> None:
        self.router.attach(client)

    def detach(self, client: Any) -> None:
        self.router.detach(client)

    def request(self, client: Any, change: Change) -> None:
        self.router.request(client, change)

    def state_of(self, client: Any) -> State:
        return self.router.state(client) if client in self.router else {}

    def subscriptions_of(self, client: Any) -> int:
        return sum(len(symbols) for symbols in self.state_of(client).values())

    def size_after(self, client: Any, change: Change) -> int:
        return self.router.size_after(client, change)

    def queued_symbols(self, client: Any) -> int:
        return self.router.queued_symbols(client)

    # -- for the router: the upstream side ---------------------------------------

    def send_change(self, action: str, keys: list[Key]) -> None:
        self._outbox.append((action, keys))
        if self._pacer is None:
            self._send_paced()
        if self._ack_deadline is None or not self._ack_deadline.active():
            self._ack_deadline = self.clock.callLater(ACK_DEADLINE, self._settle_waiting)

    def _send_paced(self) -> None:
        """Send what the token bucket allows now; come back when the next token is due."""
        self._pacer = None
        now = self.clock.seconds()
        self._tokens = min(float(CHANGE_BURST),
                           self._tokens + (now - self._tokens_at) * CHANGES_PER_SECOND)
        self._tokens_at = now
        while self._outbox and self._tokens >= 1 - 1e-9:  # tolerate float rounding
            self._tokens -= 1
            self.link.send_change(*self._outbox.popleft())
        if self._outbox:
            wait = max(0.001, (1 - self._tokens) / CHANGES_PER_SECOND)
            self._pacer = self.clock.callLater(wait, self._send_paced)

    def _settle_waiting(self) -> None:
        """Clients must not wait on a slow upstream for their ack (Go gives up after 3 s)."""
        self._ack_deadline = None
        if not self.router.waiting:
            return
        settled = self.router.settle_waiting()
        self._log.warn("upstream {path} did not acknowledge within {deadline}s: answered"
                       " {count} waiting request(s) from local state", path=self.stream.path,
                       deadline=ACK_DEADLINE, count=len(settled))

    # -- IDataReceiver -------------------------------------------------------------

    def _ready(self) -> None:
        self._last_data = self.clock.seconds()
        if self._silence_timeout:
            self._silence_check = self.clock.callLater(self._silence_timeout / 2,
                                                       self._watch_silence)
        self.router.upstream_ready(self)

    def _down(self, was_ready: bool) -> None:
        for call in (self._silence_check, self._ack_deadline, self._pacer):
            if call is not None and call.active():
                call.cancel()
        self._silence_check = self._ack_deadline = self._pacer = None
        self._outbox.clear()  # the union goes up whole once the link is ready again
        if was_ready:
            self.books.clear()  # upstream sends fresh books after the resubscription
            self.router.upstream_lost()

    def acked(self, keys: set[Key]) -> None:
        self.router.upstream_acked(keys)

    def request_refused(self, code: int) -> None:
        client = self.router.upstream_refused(code)
        self._log.info("upstream {path} refused a request with {code} (client {client})",
                       path=self.stream.path, code=code, client=client)

    def upstream_error(self, message: dict) -> None:
        if self.state == "ready":
            fanout.notice(self.clients, message)

    def received(self, elements: list[codec.Element], size: int) -> None:
        """One upstream frame's data: books updated, routed, fanned out."""
        self.bytes_in += size
        if not elements or self.state != "ready":
            return
        self._last_data = now = self.clock.seconds()
        self.incoming.add(len(elements), now)
        audiences: dict[frozenset, list[int]] = {}
        by_symbol = self.dialect.types_by_symbol
        router = self.router
        known = router.audiences
        for position, element in enumerate(elements):
            symbol = element.symbol
            if by_symbol is not None and symbol is not None:
                channel = by_symbol.get(element.kind)
                if channel is None:
                    continue
                members = known.get(channel, _NONE).get(symbol)  # the router's cache
                if members is None:
                    members = router.audience(channel, symbol)
            else:
                channel, symbols = self.dialect.routing(element.message)
                if channel is None:
                    continue
                members = router.audience_of(channel, symbols)
            if channel == "orderbooks":
                self.books.apply(element.message)
            if members:
                positions = audiences.get(members)
                if positions is None:
                    audiences[members] = [position]
                else:
                    positions.append(position)
        messages, size = fanout.deliver(elements, audiences)
        self.messages_out += messages
        self.bytes_out += size

    def _joined(self, client: Any, keys: set[Key]) -> None:
        """A client joined books upstream already streams: send it each whole book."""
        books = sorted(symbol for channel, symbol in keys if channel == "orderbooks")
        if not books:
            return
        symbols: dict[str, None] = {}
        for symbol in books:
            symbols.update(dict.fromkeys(self.books.symbols() if symbol == "*" else [symbol]))
        snapshots = [self.books.snapshot(symbol) for symbol in symbols]
        elements = [codec.Element.of(snapshot) for snapshot in snapshots if snapshot]
        if elements:
            fanout.snapshot(client, elements)

    def _watch_silence(self) -> None:
        """Every half silence-limit, drop a connection that went mute."""
        self._silence_check = None
        limit = self._silence_timeout
        if not limit or self.state != "ready":
            return
        quiet = self.clock.seconds() - self._last_data
        if quiet > limit and self.router.wanted:
            self._log.warn("upstream {path} sent no data for {quiet:.0f}s with subscriptions:"
                           " taking it for mute, reconnecting", path=self.stream.path,
                           quiet=quiet, silence=limit)
            self.link.drop()
            return
        if not self.router.wanted:
            self._last_data = self.clock.seconds()  # nothing to hear yet
        self._silence_check = self.clock.callLater(limit / 2, self._watch_silence)
