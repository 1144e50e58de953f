"""Upstream sessions, one per (account, endpoint), opened and closed on demand.

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
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from alpaca_proxy.credentials import Credentials
from alpaca_proxy.dialects.alpaca_data import DIALECTS, ProtocolError
from alpaca_proxy.paths import POLYGON, Endpoint
from alpaca_proxy.polygon import PolygonSession
from alpaca_proxy.trading import TRADING, TradingSession
from alpaca_proxy.upstream import BaseUpstreamSession, Health, UpstreamService, UpstreamSession

#: How long a locally verified client waits for upstream's own verdict before
#: it is told ``authenticated`` anyway (Go clients give up after 3 s).
VERDICT_WAIT = 2.5
#: How long upstream's refusal of a key pair (402, 409, ...) is answered locally:
#: clients that retry at once (alpaca-trade-api: every 10 ms) must not hammer it.
REFUSAL_MEMORY = 60.0


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
        health: Health = Health(),
        trust_root: Any = None,
        polygon_url: Callable[[], str] | None = None,
        polygon_accounts: Mapping[str, Credentials] | None = None,
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
        self._health = health
        #: CAs that upstream TLS certificates must chain to (None: the platform's).
        self._trust_root = trust_root
        self._sessions: dict[tuple[str, str], UpstreamService] = {}
        self._retirements: dict[BaseUpstreamSession, Any] = {}
        #: (key, path) -> (credentials refused, code, until when)
        self._refusals: dict[tuple[str, str], tuple[Credentials, int, float]] = {}

    @property
    def sessions(self) -> list[BaseUpstreamSession]:
        return [service.session for service in self._sessions.values()]

    def authenticate(self, endpoint: Endpoint, credentials: Credentials) -> Deferred:
        """A Deferred firing with the session a client may join, or ProtocolError."""
        configured = None
        accounts = self._polygon_accounts if endpoint.kind == POLYGON else self._accounts
        if accounts is not None:
            configured = accounts.get(credentials.key)
            if configured is None or not configured.matches(credentials):
                return fail(ProtocolError(402))
        refusal = self._refusals.get((credentials.key, endpoint.path))
        if refusal is not None:
            refused, code, until = refusal
            if self._clock.seconds() >= until:
                del self._refusals[(credentials.key, endpoint.path)]
            elif refused.matches(credentials):
                return fail(ProtocolError(code))
        service = self._sessions.get((credentials.key, endpoint.path))
        if service is not None and not service.session.credentials.matches(credentials):
            return fail(ProtocolError(402))
        if service is None:
            service = self._open(endpoint, configured or credentials)
        session = service.session
        verdict = session.verdict()
        if configured is not None and not verdict.called:
            # Locally verified: don't keep the client waiting on a slow upstream.
            verdict = _first(verdict, VERDICT_WAIT, self._clock)

        def settled(outcome: Any) -> Any:
            # The client joins (cancelling this) unless it failed or left meanwhile.
            self._maybe_retire(session)
            return outcome

        return verdict.addBoth(settled).addCallback(lambda _: session)

    def join(self, session: BaseUpstreamSession, client: Any) -> None:
        """Attach an authenticated client to its session."""
        pending = self._retirements.pop(session, None)
        if pending is not None and pending.active():
            pending.cancel()
        session.attach(client)

    def leave(self, session: BaseUpstreamSession, client: Any) -> None:
        """Detach a client; the session lingers, then closes if nobody came back."""
        session.detach(client)
        self._maybe_retire(session)

    def _open(self, endpoint: Endpoint, credentials: Credentials) -> UpstreamService:
        session: BaseUpstreamSession
        if endpoint.kind == TRADING:
            session = TradingSession(endpoint, credentials, clock=self._clock,
                                     health=self._health)
            base = self._trading_url()
        elif endpoint.kind == POLYGON:
            session = PolygonSession(endpoint, credentials, clock=self._clock, health=self._health)
            base = self._polygon_url()
        else:
            session = UpstreamSession(endpoint, credentials, DIALECTS[endpoint.kind],
                                      clock=self._clock, health=self._health)
            base = self._data_url()
        session.on_refused = self._refused
        url = base.rstrip("/") + endpoint.path
        service = UpstreamService(session, url, self._reactor, self._trust_root)
        self._sessions[(credentials.key, endpoint.path)] = service
        self._log.info("opening upstream {url} for key {key}", url=url, key=credentials.key)
        service.setServiceParent(self)
        return service

    def _maybe_retire(self, session: BaseUpstreamSession) -> None:
        if not self.running or not session.idle or session in self._retirements:
            return
        self._retirements[session] = self._clock.callLater(
            self._linger, self._retire, session)

    def _retire(self, session: BaseUpstreamSession) -> Deferred:
        self._retirements.pop(session, None)
        if not session.idle:
            return succeed(None)
        key = (session.credentials.key, session.endpoint.path)
        service = self._sessions.get(key)
        if service is None or service.session is not session:
            return succeed(None)
        del self._sessions[key]
        self._log.info("closing idle upstream {path} ({key})", path=session.endpoint.path,
                       key=session.credentials.key)
        return service.disownServiceParent() or succeed(None)

    def _refused(self, session: BaseUpstreamSession, code: int) -> None:
        """Upstream refused the account: stop dialling, tell the clients, forget it."""
        for client in session.clients:
            client.upstream_refused(code)
        key = (session.credentials.key, session.endpoint.path)
        self._refusals[key] = (session.credentials, code, self._clock.seconds() + REFUSAL_MEMORY)
        service = self._sessions.get(key)
        if service is not None and service.session is session:
            del self._sessions[key]
            pending = self._retirements.pop(session, None)
            if pending is not None and pending.active():
                pending.cancel()
            service.disownServiceParent()

    def stopService(self) -> Deferred:
        for pending in self._retirements.values():
            if pending.active():
                pending.cancel()
        self._retirements.clear()
        return super().stopService()


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
