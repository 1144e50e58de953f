"""Polygon/Massive clusters: the upstream session and the local client protocol.

Upstream, one connection per market per API key, authenticated with
``{"action":"auth","params":KEY}``; subscriptions are the union of the clients'
(ev, symbol) keys, kept by the same ``Router`` as Alpaca's streams.  Polygon
acknowledges each parameter by name (``subscribed to: T.MSFT``), so acks are
matched to requests by name, and a request counts as answered once each of its
parameters is.  Polygon allows one connection per cluster and key and evicts
the older one (``max_connections``): the session backs off further each time
it is evicted, so it does not fight another program for the slot every second.

Locally, a client sees Polygon's own protocol: ``connected`` first,
``auth_success``/``auth_failed``/``auth_timeout``, one ``subscribed to: X``
status per parameter before any data it unlocks, JSON text frames only.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any

from alpaca_proxy import codec, paths
from alpaca_proxy.credentials import Credentials
from alpaca_proxy.dialects import polygon
from alpaca_proxy.downstream import ClientProtocol
from alpaca_proxy.upstream import ACK_DEADLINE, Health, UpstreamProtocol, UpstreamSession, backoff

#: A connection that stayed authenticated this long was not fighting for its slot.
SETTLED_AFTER = 60.0


class PolygonSession(UpstreamSession):
    """One market's cluster for one API key, and the clients sharing it."""

    upgrade_headers: dict[str, str] = {}

    def __init__(self, endpoint: paths.Endpoint, credentials: Credentials, clock: Any,
                 rng: random.Random | None = None, health: Health = Health()) -> None:
        dialect = polygon.DIALECTS[endpoint.path.lstrip("/")]
        super().__init__(endpoint, credentials, dialect, clock, rng, health)
        #: What upstream acknowledged holding.
        self._have: set[tuple[str, str]] = set()
        #: Requests sent and not fully acknowledged: (action, keys unanswered, sent at).
        self._outstanding: deque[tuple[str, set[tuple[str, str]], float]] = deque()
        self._evictions = 0
        self._evicted = False

    def encode(self, message: dict) -> tuple[bytes, bool]:
        return codec.to_json(message), False

    def retry_delay(self, attempt: int) -> float:
        # Evicted n times in a row: wait as after n + 1 failures (1-2 s, 2-4 s ... 30 s).
        evicted = self._evictions + 1 if self._evictions else 0
        return backoff(max(attempt, self._bad_sessions, evicted), self._rng)

    # -- frames ------------------------------------------------------------------

    def _split(self, payload: bytes) -> list[codec.Element]:
        return codec.split_json_frame(payload)

    def _is_control(self, message: dict) -> bool:
        return message.get("ev") == "status"

    def _control(self, message: dict) -> None:
        state = message.get("status")
        if state == "connected":
            self._send_auth()
        elif polygon.is_auth_success(message) and self.state == "authenticating":
            self._authenticated()
        elif state == "auth_failed":
            self._refused(402)
        elif state == "success":
            answered = polygon.acknowledged(message)
            if answered is not None:
                self._answered(*answered)
        elif state == "max_connections":
            self._evicted = True
            self._log.warn(
                "upstream {path} ({key}): {text!r} -- another connection uses this API key"
                " on this cluster; backing off before taking the slot back",
                path=self.endpoint.path, key=self.credentials.key, text=message.get("message"))
        else:
            self._log.warn("upstream {path} status {status}: {text!r}", path=self.endpoint.path,
                           status=state, text=message.get("message"))
            if state == "error" and self.state == "ready":
                # Plan restrictions and the like: clients should hear it, as they would.
                for client in self.clients:
                    client.send_status(message)

    def _send_auth(self) -> None:
        if self._protocol is None:
            return
        self.state = "authenticating"
        self._send({"action": "auth", "params": self.credentials.secret})

    # -- acknowledgements --------------------------------------------------------

    def _authenticated(self) -> None:
        # A new connection holds nothing yet (as the router's upstream_ready assumes).
        self._have.clear()
        self._outstanding.clear()
        super()._authenticated()

    def send_change(self, action: str, keys: list[tuple[str, str]]) -> None:
        self._outstanding.append((action, set(keys), self.clock.seconds()))
        super().send_change(action, keys)

    def _answered(self, action: str, keys: list[tuple[str, str]]) -> None:
        for key in keys:
            if action == "subscribe":
                self._have.add(key)
            else:
                self._have.discard(key)
            for asked, waiting, _ in self._outstanding:
                if asked == action and key in waiting:
                    waiting.discard(key)
                    break
        while self._outstanding and not self._outstanding[0][1]:
            self._outstanding.popleft()
            self.router.upstream_acked(set(self._have))

    def _settle_waiting(self) -> None:
        # Requests upstream left unanswered past the deadline: their parameters
        # count as not held (the router asks again only when a client does);
        # late answers still update what upstream holds.
        overdue = self.clock.seconds() - ACK_DEADLINE
        stale = 0
        while self._outstanding and self._outstanding[0][2] <= overdue:
            self._outstanding.popleft()
            self.router.upstream_acked(set(self._have))
            stale += 1
        if stale:
            self._log.warn("upstream {path} left {count} request(s) unanswered for {deadline}s",
                           path=self.endpoint.path, count=stale, deadline=ACK_DEADLINE)
        super()._settle_waiting()
        if self._outstanding:
            wait = self._outstanding[0][2] + ACK_DEADLINE - self.clock.seconds()
            self._ack_deadline = self.clock.callLater(max(0.0, wait), self._settle_waiting)

    # -- connection ----------------------------------------------------------------

    def disconnected(self, protocol: UpstreamProtocol, clean: bool, code: Any, reason: Any) -> None:
        lasted = (self.clock.seconds() - self.ready_since) if self.ready_since is not None else 0.0
        super().disconnected(protocol, clean, code, reason)
        if self._evicted:
            self._evicted = False
            self._evictions += 1
        elif lasted >= SETTLED_AFTER:
            self._evictions = 0


class PolygonProtocol(ClientProtocol):
    """A local client speaking Polygon's protocol."""

    encoding = codec.JSON

    def _resolve(self, path: str) -> paths.Endpoint | None:
        return paths.resolve_polygon(path, self.factory.polygon_root)

    def onConnect(self, request):
        super().onConnect(request)
        self.encoding = codec.JSON  # Polygon speaks JSON only
        self._header_credentials = None  # the key comes by message only
        #: (action, parameters) of each request the router has not answered yet.
        self._asked: deque[tuple[str, tuple[str, ...]]] = deque()
        return None

    def send_status(self, *messages: dict) -> None:
        self.send_payload(codec.to_json(list(messages)), False)

    def _opened(self) -> None:
        self.send_status(polygon.CONNECTED)

    def _request(self, message: Any) -> None:
        try:
            request = polygon.parse(message)
        except polygon.PolygonError as refused:
            self._log.info("client {peer} on {path}: {reply}", peer=self.peer_name,
                           path=self.endpoint.path, reply=refused.reply["message"])
            self.send_status(refused.reply)
            return
        if isinstance(request, polygon.PolygonAuth):
            if self.session is None:
                self._authenticate(request.credentials)
            elif self.session.credentials.matches(request.credentials):
                self.send_status(polygon.AUTH_SUCCESS)
            else:
                self.send_status(polygon.AUTH_FAILED)
        elif self.session is None:
            self.send_status(polygon.NOT_AUTHORIZED)
        elif not self._within_limits(request.change):
            self._log.info("client {peer} on {path}: over the proxy's symbol limits",
                           peer=self.peer_name, path=self.endpoint.path)
            self.send_status(polygon.status("error", "subscription limit exceeded"))
        else:
            self._asked.append((request.change.action, request.params))
            self.session.router.request(self, request.change)

    def _undecodable(self, why: str) -> None:
        self._log.info("client {peer} on {path}: {why}", peer=self.peer_name,
                       path=self.endpoint.path, why=why)
        self.send_status(polygon.INVALID_MESSAGE)

    def _auth_accepted(self) -> None:
        self.send_status(polygon.AUTH_SUCCESS)

    def _auth_refused(self, code: int) -> None:
        self.send_status(polygon.AUTH_FAILED)

    def _deadline_passed(self) -> None:
        self.send_status(polygon.AUTH_TIMEOUT)

    def _slow(self) -> None:
        self.sendMessage(codec.to_json([polygon.SLOW_CONSUMER]), False)

    # -- called by the router ----------------------------------------------------

    def acknowledge(self, state: Any) -> None:
        """The router confirmed this client's oldest request: one status per parameter."""
        action, params = self._asked.popleft()
        if params:
            self.send_status(*polygon.acknowledgements(action, params))

    def refuse(self, code: int) -> None:
        action, params = self._asked.popleft()
        self._log.info("client {peer} on {path}: request refused upstream ({code})",
                       peer=self.peer_name, path=self.endpoint.path, code=code)
        self.send_status(polygon.status("error", "%s refused: %s" % (action, ",".join(params))))
