"""The link to a Polygon/Massive cluster (one market) for one API key.

Authenticates with ``{"action":"auth","params":KEY}``.  Polygon acknowledges
each parameter by name (``subscribed to: T.MSFT``), so acks are matched to
changes by name, and a change counts as answered once each of its parameters
is; one left unanswered past the ack deadline counts as answered with what
upstream is known to hold (late answers still update that).  Polygon allows
one connection per cluster and key and evicts the older one
(``max_connections``): the link backs off further each time it is evicted, so
it does not fight another program for the slot every second.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from alpaca_proxy import codec
from alpaca_proxy.dialects import polygon
from alpaca_proxy.upstream.link import DataLink, backoff
from alpaca_proxy.upstream.session import ACK_DEADLINE

#: A connection that stayed authenticated this long was not fighting for its slot.
SETTLED_AFTER = 60.0


class PolygonLink(DataLink):
    """One market's cluster for one API key."""

    def __init__(self, *args: Any, dialect: polygon.PolygonDialect, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dialect = dialect
        self._authenticating = False
        #: What upstream acknowledged holding.
        self._have: set[tuple[str, str]] = set()
        #: Changes sent and not fully acknowledged: (action, keys unanswered, sent at).
        self._outstanding: deque[tuple[str, set[tuple[str, str]], float]] = deque()
        self._overdue_check: Any = None
        self._evictions = 0
        self._evicted = False
        self._ready_since: float | None = None

    def retry_delay(self, attempt: int) -> float:
        # Evicted n times in a row: wait as after n + 1 failures (1-2 s, 2-4 s ... 30 s).
        evicted = self._evictions + 1 if self._evictions else 0
        return backoff(max(attempt, self._bad_sessions, evicted), self._rng)

    # -- frames ------------------------------------------------------------------

    @staticmethod
    def split(payload: bytes) -> list[codec.Element]:
        return codec.split_json_frame(payload)

    @staticmethod
    def is_control(element: codec.Element) -> bool:
        return element.message.get("ev") == "status"

    def _control(self, message: dict) -> None:
        state = message.get("status")
        if state == "connected":
            self._send_auth()
        elif polygon.is_auth_success(message) and self._authenticating:
            self._authenticating = False
            # A new connection holds nothing yet (as the router's upstream_ready assumes).
            self._have.clear()
            self._outstanding.clear()
            self._ready_since = self.clock.seconds()
            self._authenticated()
        elif state == "auth_failed":
            self._authenticating = False
            self._refused(402, "authentication failed")
        elif state == "success":
            answered = polygon.acknowledged(message)
            if answered is not None:
                self._answered(*answered)
        elif state == "max_connections":
            self._evicted = True
            self._log.warn(
                "upstream {path} ({key}): {text!r} -- another connection uses this API key"
                " on this cluster; backing off before taking the slot back",
                path=self.stream.path, key=self.credentials.key, text=message.get("message"))
        else:
            self._log.warn("upstream {path} status {status}: {text!r}", path=self.stream.path,
                           status=state, text=message.get("message"))
            if state == "error":
                # Plan restrictions and the like: clients should hear it, as they would.
                self.receiver.upstream_error(message)

    def _send_auth(self) -> None:
        if not self.connected:
            return
        self._authenticating = True
        self.send({"action": "auth", "params": self.credentials.secret})

    # -- changes and their acknowledgements ---------------------------------------

    def send_change(self, action: str, keys: list[tuple[str, str]]) -> None:
        self._outstanding.append((action, set(keys), self.clock.seconds()))
        self.send(self.dialect.request(action, keys))
        self._watch_overdue()

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
            self.receiver.acked(set(self._have))

    def _watch_overdue(self) -> None:
        if self._overdue_check is None and self._outstanding:
            wait = self._outstanding[0][2] + ACK_DEADLINE - self.clock.seconds()
            self._overdue_check = self.clock.callLater(max(0.0, wait), self._overdue)

    def _overdue(self) -> None:
        """Changes upstream left unanswered past the deadline count as answered.

        Their parameters count as not held (the router asks again only when a
        client does); late answers still update what upstream holds.
        """
        self._overdue_check = None
        overdue = self.clock.seconds() - ACK_DEADLINE
        stale = 0
        while self._outstanding and self._outstanding[0][2] <= overdue:
            self._outstanding.popleft()
            self.receiver.acked(set(self._have))
            stale += 1
        if stale:
            self._log.warn("upstream {path} left {count} request(s) unanswered for {deadline}s",
                           path=self.stream.path, count=stale, deadline=ACK_DEADLINE)
        self._watch_overdue()

    # -- connection ----------------------------------------------------------------

    def _on_closed(self) -> None:
        self._authenticating = False
        if self._overdue_check is not None and self._overdue_check.active():
            self._overdue_check.cancel()
        self._overdue_check = None
        self._outstanding.clear()
        lasted = (self.clock.seconds() - self._ready_since
                  if self._ready_since is not None else 0.0)
        self._ready_since = None
        if self._evicted:
            self._evicted = False
            self._evictions += 1
        elif lasted >= SETTLED_AFTER:
            self._evictions = 0
