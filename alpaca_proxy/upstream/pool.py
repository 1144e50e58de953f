"""Upstream sessions, one per (account, stream), opened and closed on demand.

Local auth rules:

- With accounts configured (the environment's pair, a credentials file), a
  client must present one of those pairs exactly (compared in constant time) or
  gets 402; clients of one account share its upstream sessions, and accounts
  never share anything.
- With none configured, a client's pair opens an upstream session for its key
  and upstream's verdict is the answer; later clients presenting the same pair
  share it, another secret for the same key gets 402.

Polygon/Massive keys follow the same rules with their own accounts
(``polygon_accounts``); the key is the secret there, so its credentials carry a
fingerprint as the public half (``dialects.polygon.credentials_for``).

Each session gets its link here (``_open``): the one place that knows which
kind of link serves which stream (a provider's websocket, with the recorder's
tap under ``--record``; the recording under ``--replay``; under ``--bus`` a
clustered link that dials only while this node holds the lease).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from alpaca_proxy import fanout
from alpaca_proxy.credentials import Credentials
from alpaca_proxy.dialects import alpaca_data, polygon
from alpaca_proxy.refusal import AUTH_FAILED, CONNECTION_LIMIT, Refused
from alpaca_proxy.streams import POLYGON, TRADING, Stream
from alpaca_proxy.upstream.alpaca_data import AlpacaDataLink
from alpaca_proxy.upstream.alpaca_trading import TradingLink, TradingSession
from alpaca_proxy.upstream.clustered import ClusteredLink
from alpaca_proxy.upstream.link import Liveness
from alpaca_proxy.upstream.polygon import PolygonLink
from alpaca_proxy.upstream.replay import replay_link
from alpaca_proxy.upstream.session import DataSession, Session

#: How long a locally verified client waits for upstream's own verdict before
#: it is told ``authenticated`` anyway (Go clients give up after 3 s).
VERDICT_WAIT = 2.5
#: How long upstream's refusal of a key pair (402, 409, ...) is answered locally:
#: clients that retry at once (alpaca-trade-api: every 10 ms) must not hammer it.
REFUSAL_MEMORY = 60.0
#: Refused pairs remembered at most, and key ids whose failures are counted (the
#: oldest are forgotten first).
MAX_REMEMBERED = 1024
#: Longest key id and secret taken (Alpaca's are 20 and 40 characters; OAuth
#: tokens and Polygon keys are longer, and far below these).
MAX_KEY = 128
MAX_SECRET = 1024
#: After upstream refuses a key id n >= 2 times in a row, a new pair for it is
#: tried only 2**(n-2) seconds after the last refusal, at most this long.  A pair
#: upstream accepted before is never held back.
THROTTLE_CAP = 30.0
#: Upstream sessions open at once, by default (an account on one stream each).
DEFAULT_MAX_SESSIONS = 64


class UpstreamPool(MultiService):
    """Creates, shares and retires upstream sessions; a child service each."""

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        data_url: Callable[[], str],
        accounts: Mapping[str, Credentials] | None = None,
        trading_url: Callable[[], str] | None = None,
        linger: float = 30.0,
        clock: Any = None,
        liveness: Liveness = Liveness(),
        trust_root: Any = None,
        polygon_url: Callable[[], str] | None = None,
        polygon_accounts: Mapping[str, Credentials] | None = None,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        on_trade_update: Callable[[str], None] | None = None,
        recorder: Any = None,
        player: Any = None,
        bus: Any = None,
        bus_symbols: bool = False,
    ) -> None:
        super().__init__()
        self._reactor = reactor
        #: Timers (linger, verdict wait, retries); the reactor unless a test gives a Clock.
        self._clock = reactor if clock is None else clock
        self._data_url = data_url
        self._trading_url = trading_url or data_url
        self._polygon_url = polygon_url or data_url
        #: key -> the only pair accepted for it; None: clients bring their own.
        #: Alpaca's and Polygon's keys are separate: neither opens the other's streams.
        self._accounts = dict(accounts) if accounts else None
        self._polygon_accounts = dict(polygon_accounts) if polygon_accounts else None
        self._linger = linger
        self._liveness = liveness
        #: CAs that upstream TLS certificates must chain to (None: the platform's).
        self._trust_root = trust_root
        self._sessions: dict[tuple[str, str], Session] = {}
        self._max_sessions = max_sessions
        #: Called with an account's key id on each of its trade updates.
        self.on_trade_update = on_trade_update
        self._retirements: dict[Session, Any] = {}
        #: (key, path) -> (credentials refused, code, until when); oldest first.
        self._refusals: dict[tuple[str, str], tuple[Credentials, int, float]] = {}
        #: key id -> (refusals in a row, when the last one came); oldest first.
        self._failures: dict[str, tuple[int, float]] = {}
        #: key id -> fingerprint of the pair upstream last accepted for it.
        self._accepted: dict[str, str] = {}
        #: Gets every market-data frame (``recording.recorder.Recorder``), if recording.
        self._recorder = recorder
        #: Plays a recording instead of dialling upstream (``recording.player.Player``).
        self._player = player
        #: Shares each upstream with other nodes (``cluster.bus.Bus``), with ``--bus``.
        self._bus = bus
        self._bus_symbols = bus_symbols

    @property
    def accounts(self) -> Mapping[str, Credentials] | None:
        """Alpaca's configured accounts (key id -> pair), or None: clients bring their own."""
        return self._accounts

    @property
    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    def authenticate(self, stream: Stream, credentials: Credentials) -> Deferred:
        """A Deferred firing with the session a client may join, or ``Refused``.

        Cancelling it (the client left) lets an unused session retire.
        """
        if not (0 < len(credentials.key) <= MAX_KEY and 0 < len(credentials.secret) <= MAX_SECRET):
            return fail(Refused(AUTH_FAILED))
        configured = None
        accounts = self._polygon_accounts if stream.kind == POLYGON else self._accounts
        if accounts is not None:
            configured = accounts.get(credentials.key)
            if configured is None or not configured.matches(credentials):
                return fail(Refused(AUTH_FAILED))
        refusal = self._refusals.get((credentials.key, stream.path))
        if refusal is not None:
            refused, code, until = refusal
            if self._clock.seconds() >= until:
                del self._refusals[(credentials.key, stream.path)]
            elif refused.matches(credentials):
                return fail(Refused(code))
        session = self._sessions.get((credentials.key, stream.path))
        if session is not None and not session.credentials.matches(credentials):
            if session.verified or configured is not None:
                return fail(Refused(AUTH_FAILED))
            # Another pair for this key id is being tried: one attempt at a time per
            # key id, so wrong pairs cannot stand in the right one's way for long.
            return self._retry_after(session.verdict(), stream, credentials)
        if session is None:
            wait = self._throttle(credentials)
            if wait > 0:
                return self._retry_after(deferLater(self._clock, wait, lambda: None),
                                         stream, credentials)
            if self._max_sessions and len(self._sessions) >= self._max_sessions:
                self._log.warn("refusing a new upstream session for {path}: {count} are open,"
                               " the limit (--max-upstreams)", path=stream.path,
                               count=len(self._sessions))
                return fail(Refused(CONNECTION_LIMIT))
            session = self._open(stream, configured or credentials)
        verdict = session.verdict()
        if configured is not None and not verdict.called:
            # Locally verified: don't keep the client waiting on a slow upstream.
            verdict = _first(verdict, VERDICT_WAIT, self._clock)
        session.waiting += 1

        def settled(outcome: Any) -> Any:
            # The client joins (cancelling the retirement) unless it failed or left.
            session.waiting -= 1
            if session.verified:
                self._failures.pop(session.credentials.key, None)
                _remember(self._accepted, session.credentials.key,
                          session.credentials.fingerprint)
            self._maybe_retire(session)
            return outcome

        return verdict.addBoth(settled).addCallback(lambda _: session)

    def _retry_after(self, event: Deferred, stream: Stream, credentials: Credentials) -> Deferred:
        """Authenticate again once ``event`` fires (whatever its outcome)."""
        cancelled = []

        def cancel(_: Deferred) -> None:
            cancelled.append(True)
            event.cancel()

        retried: Deferred = Deferred(cancel)

        def again(outcome: Any) -> None:
            if cancelled:
                return
            if isinstance(outcome, Failure) and outcome.check(Refused) and outcome.value.detail:
                retried.errback(outcome)  # upstream unreachable: this pair cannot try either
                return
            self.authenticate(stream, credentials).chainDeferred(retried)

        event.addBoth(again)
        return retried

    def _throttle(self, credentials: Credentials) -> float:
        """Seconds before this pair may be tried upstream (0: now)."""
        failures = self._failures.get(credentials.key)
        if failures is None or failures[0] < 2:
            return 0.0
        if self._accepted.get(credentials.key) == credentials.fingerprint:
            return 0.0
        count, last = failures
        return min(THROTTLE_CAP, 2.0 ** (count - 2)) - (self._clock.seconds() - last)

    def join(self, session: Session, client: Any) -> None:
        """Attach an authenticated client to its session."""
        pending = self._retirements.pop(session, None)
        if pending is not None and pending.active():
            pending.cancel()
        session.attach(client)

    def leave(self, session: Session, client: Any) -> None:
        """Detach a client; the session lingers, then closes if nobody came back."""
        session.detach(client)
        self._maybe_retire(session)

    def _open(self, stream: Stream, credentials: Credentials) -> Session:
        session: Session
        if stream.kind == TRADING:
            session = TradingSession(stream, credentials, self._clock)
            session.on_event = self.on_trade_update
            link_class, options, base = TradingLink, {}, self._trading_url()
        elif stream.kind == POLYGON:
            dialect = polygon.DIALECTS[stream.path.lstrip("/")]
            session = DataSession(stream, credentials, self._clock, dialect,
                                  self._liveness.silence_timeout)
            link_class, options, base = PolygonLink, {"dialect": dialect}, self._polygon_url()
        else:
            dialect = alpaca_data.DIALECTS[stream.kind]
            session = DataSession(stream, credentials, self._clock, dialect,
                                  self._liveness.silence_timeout)
            link_class, options, base = AlpacaDataLink, {"dialect": dialect}, self._data_url()
        url = base.rstrip("/") + stream.path
        if self._player is not None:
            url = "replay:%s" % (stream.path,)
            session.link = replay_link(session, stream, self._player, self._clock)
            if stream.kind == TRADING:
                session.on_listen = session.link.listened
        else:
            def upstream(receiver: Any) -> Any:
                link = link_class(receiver, stream, credentials, url, self._reactor,
                                  self._clock, self._liveness, self._trust_root, **options)
                if self._recorder is not None and self._recorder.wants(stream):
                    link.tap = self._recorder.tap(stream)
                return link

            if self._bus is None:
                session.link = upstream(session)
            else:  # the lease decides which node dials; the others follow it
                session.link = ClusteredLink(session, stream, credentials, self._bus,
                                             self._clock, upstream,
                                             dialect=getattr(session, "dialect", None),
                                             symbol_feed=self._bus_symbols)
        session.on_refused = self._refused
        session.upstream_judges = (self._polygon_accounts if stream.kind == POLYGON
                                   else self._accounts) is None
        self._sessions[(credentials.key, stream.path)] = session
        self._log.info("opening upstream {url} for key {key}", url=url, key=credentials.key)
        session.link.setServiceParent(self)
        return session

    def _maybe_retire(self, session: Session) -> None:
        if not self.running or not session.idle or session in self._retirements:
            return
        self._retirements[session] = self._clock.callLater(
            self._linger, self._retire, session)

    def _retire(self, session: Session) -> Deferred:
        self._retirements.pop(session, None)
        if not session.idle:
            return succeed(None)
        key = (session.credentials.key, session.stream.path)
        if self._sessions.get(key) is not session:
            return succeed(None)
        del self._sessions[key]
        self._log.info("closing idle upstream {path} ({key})", path=session.stream.path,
                       key=session.credentials.key)
        return session.link.disownServiceParent() or succeed(None)

    def _refused(self, session: Session, code: int) -> None:
        """Upstream refused the account: stop dialling, tell the clients, forget it."""
        fanout.account_refused(session.clients, code)
        key = (session.credentials.key, session.stream.path)
        now = self._clock.seconds()
        _remember(self._refusals, key, (session.credentials, code, now + REFUSAL_MEMORY))
        count = self._failures.pop(session.credentials.key, (0, now))[0]
        _remember(self._failures, session.credentials.key, (count + 1, now))
        if self._sessions.get(key) is session:
            del self._sessions[key]
            pending = self._retirements.pop(session, None)
            if pending is not None and pending.active():
                pending.cancel()
            session.link.disownServiceParent()

    def stopService(self) -> Deferred:
        for pending in self._retirements.values():
            if pending.active():
                pending.cancel()
        self._retirements.clear()
        return super().stopService()


def _remember(memory: dict, key: Any, value: Any) -> None:
    """Insert as the newest entry; forget the oldest past ``MAX_REMEMBERED``."""
    memory.pop(key, None)
    memory[key] = value
    while len(memory) > MAX_REMEMBERED:
        del memory[next(iter(memory))]


def _first(verdict: Deferred, timeout: float, clock: Any) -> Deferred:
    """The verdict, or success after ``timeout`` seconds if it has not come by then."""
    result: Deferred = Deferred()
    timer = clock.callLater(timeout, result.callback, None)

    def settle(outcome: Any) -> None:
        if timer.active():
            timer.cancel()
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)

    verdict.addBoth(settle)
    return result
