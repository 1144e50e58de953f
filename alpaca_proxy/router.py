"""Subscriptions of many clients over one upstream session, and data fan-out.

Pure: no reactor, no sockets.  Clients are ``interfaces.IClient`` providers,
answered through ``fanout`` (``acknowledge``, ``refuse``); the upstream side is
any object with ``send_change(action, keys)`` (the session, which passes it to
its link), given with ``upstream_ready``.

Bookkeeping, in short:

- Each client has a *confirmed* state (what it was last acknowledged; data is
  routed by it) and at most one *pending* request.  A client's requests are
  handled one at a time, in order, so a failed one rolls back exactly.
- ``_wanted`` counts, per (channel, symbol) key, the clients whose state (the
  pending one if any) holds it.  Only changes of that union go upstream.
- Upstream answers requests in order, so every message sent upstream is queued
  in ``_sent`` and each ``subscription`` ack or request error pops the head.
  The ack lists upstream's whole state, which becomes ``_have``.
- A request that adds keys upstream does not already hold waits for upstream's
  ack; any other request is answered at once.  While the upstream is not
  authenticated every request is answered at once from local state, and the
  whole union is sent when it is (again).
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any, Hashable, Iterable, Iterator, Sequence

from attrs import define, field

from alpaca_proxy import fanout
from alpaca_proxy.subscriptions import WILDCARD, Change, Key, State, applied, keys_of


@define
class _Pending:
    state: State
    needed: set[Key]
    #: Keys this request adds that upstream already streams.
    held: set[Key] = field(factory=set)


@define
class _Book:
    confirmed: State = field(factory=dict)
    pending: _Pending | None = None
    queue: deque[Change] = field(factory=deque)

    @property
    def current(self) -> State:
        """The state this client counts towards the union with."""
        return self.pending.state if self.pending else self.confirmed


@define
class _Sent:
    action: str
    keys: frozenset[Key]
    origin: Hashable | None


class Router:
    """Subscription books and routing for the clients of one upstream session."""

    def __init__(self, on_join: Any = None) -> None:
        #: Called as on_join(client, keys) after an ack that added keys upstream
        #: already streamed (upstream sends nothing new for them, e.g. no book).
        self._on_join = on_join
        self._books: dict[Any, _Book] = {}
        self._wanted: Counter[Key] = Counter()
        self._index: dict[str, dict[str, set[Any]]] = {}
        self._have: set[Key] = set()
        self._sent: deque[_Sent] = deque()
        self._refused: set[Key] = set()
        self._link: Any = None

    # -- clients -------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._books)

    def __contains__(self, client: Any) -> bool:
        return client in self._books

    @property
    def clients(self) -> Iterator[Any]:
        return iter(self._books)

    def attach(self, client: Any) -> None:
        """Start keeping books for a client (with an empty state)."""
        self._books.setdefault(client, _Book())

    def detach(self, client: Any) -> None:
        """Forget a client; what only it wanted is unsubscribed upstream."""
        book = self._books.pop(client, None)
        if book is None:
            return
        self._reindex(client, book.confirmed, {})
        self._count(keys_of(book.current), -1)
        self._reconcile()

    def state(self, client: Any) -> State:
        """A client's confirmed state."""
        return self._books[client].confirmed

    def request(self, client: Any, change: Change) -> None:
        """Apply a client's (un)subscribe, now or after its earlier ones finish."""
        book = self._books[client]
        if book.pending is not None or book.queue:
            book.queue.append(change)
            return
        self._start(client, book, change)

    def _start(self, client: Any, book: _Book, change: Change) -> None:
        new = applied(book.confirmed, change)
        old_keys, new_keys = keys_of(book.confirmed), keys_of(new)
        added = new_keys - old_keys
        self._count(added, +1)
        self._count(old_keys - new_keys, -1)
        if self._link is None:
            self._confirm(client, book, new)
            return
        needed = added - self._stable()
        self._refused -= needed  # asked for again: let upstream judge it again
        if not needed:
            self._confirm(client, book, new, added)
            self._reconcile()
            return
        book.pending = _Pending(new, needed, added - needed)
        self._reconcile()

    def _confirm(self, client: Any, book: _Book, state: State, held: set[Key] = frozenset()) -> None:
        self._reindex(client, book.confirmed, state)
        book.confirmed = state
        book.pending = None
        fanout.acknowledge(client, state)
        if held and self._on_join is not None:
            self._on_join(client, held)
        self._next(client, book)

    def _rollback(self, client: Any, book: _Book, code: int) -> None:
        assert book.pending is not None
        pending_keys, confirmed_keys = keys_of(book.pending.state), keys_of(book.confirmed)
        self._count(pending_keys - confirmed_keys, -1)
        self._count(confirmed_keys - pending_keys, +1)
        book.pending = None
        fanout.refuse(client, code)
        self._next(client, book)

    def _next(self, client: Any, book: _Book) -> None:
        if book.queue and book.pending is None and self._books.get(client) is book:
            self._start(client, book, book.queue.popleft())

    # -- upstream ------------------------------------------------------------

    def upstream_ready(self, link: Any) -> None:
        """Upstream authenticated (again): send it the whole union."""
        self._link = link
        self._have.clear()
        self._sent.clear()
        self._refused.clear()
        self._reconcile()

    def upstream_lost(self) -> None:
        """Upstream went away: answer waiting requests from local state."""
        self._link = None
        self._have.clear()
        self._sent.clear()
        for client, book in list(self._books.items()):
            if book.pending is not None:
                self._confirm(client, book, book.pending.state)

    def settle_waiting(self) -> list[Any]:
        """Answer every waiting request from local state (upstream is too slow to wait for).

        Upstream's replies still arrive in order and are matched as usual; an
        error for a settled request can no longer reach its client (its keys are
        then simply not asked for again).  Returns the clients answered.
        """
        settled = []
        for client, book in list(self._books.items()):
            if book.pending is not None:
                settled.append(client)
                self._confirm(client, book, book.pending.state, book.pending.held)
        return settled

    @property
    def waiting(self) -> bool:
        """Some client waits for upstream to answer its request."""
        return any(book.pending is not None for book in self._books.values())

    def upstream_acked(self, keys: set[Key]) -> None:
        """Upstream's ``subscription`` ack: its whole state, answering our oldest request."""
        self._have = set(keys)
        if self._sent:
            sent = self._sent.popleft()
            if sent.action == "subscribe":
                # Upstream took the request but left these out: don't ask again.
                self._refused |= sent.keys - self._have
        settled = self._stable() | self._refused
        for client, book in list(self._books.items()):
            if book.pending is not None and book.pending.needed <= settled:
                self._confirm(client, book, book.pending.state, book.pending.held)

    def upstream_refused(self, code: int) -> Any:
        """Upstream refused our oldest request with an error code.

        The client whose request it carried gets the error and is rolled back;
        keys other clients still wait for are asked for again on their behalf.
        Returns the client that was refused, if any.
        """
        if not self._sent:
            return None
        sent = self._sent.popleft()
        book = self._books.get(sent.origin)
        refused_client = None
        if book is not None and book.pending is not None and book.pending.needed & sent.keys:
            self._rollback(sent.origin, book, code)
            refused_client = sent.origin
        else:
            self._refused |= sent.keys
        self._reconcile()
        return refused_client

    @property
    def wanted(self) -> set[Key]:
        """The union of every client's state: what upstream should hold."""
        return set(self._wanted)

    def _stable(self) -> set[Key]:
        """Keys upstream holds that no request in flight is removing."""
        removing = set()
        for sent in self._sent:
            if sent.action == "unsubscribe":
                removing |= sent.keys
        return self._have - removing

    def _projected(self) -> set[Key]:
        """What upstream will hold once every request in flight is answered."""
        projected = set(self._have)
        for sent in self._sent:
            if sent.action == "subscribe":
                projected |= sent.keys
            else:
                projected -= sent.keys
        return projected

    def _reconcile(self) -> None:
        if self._link is None:
            return
        projected, wanted = self._projected(), set(self._wanted)
        removing = projected - wanted
        if removing:
            self._send("unsubscribe", removing, None)
        adding = wanted - projected - self._refused
        if adding:
            origin = next(
                (client for client, book in self._books.items()
                 if book.pending is not None and book.pending.needed & adding),
                None,
            )
            self._send("subscribe", adding, origin)

    def _send(self, action: str, keys: set[Key], origin: Any) -> None:
        self._sent.append(_Sent(action, frozenset(keys), origin))
        self._link.send_change(action, sorted(keys))

    def _count(self, keys: Iterable[Key], delta: int) -> None:
        for key in keys:
            count = self._wanted[key] + delta
            if count > 0:
                self._wanted[key] = count
            else:
                del self._wanted[key]
                self._refused.discard(key)

    # -- data ----------------------------------------------------------------

    def _reindex(self, client: Any, old: State, new: State) -> None:
        old_keys, new_keys = keys_of(old), keys_of(new)
        for channel, symbol in old_keys - new_keys:
            by_symbol = self._index[channel]
            by_symbol[symbol].discard(client)
            if not by_symbol[symbol]:
                del by_symbol[symbol]
        for channel, symbol in new_keys - old_keys:
            self._index.setdefault(channel, {}).setdefault(symbol, set()).add(client)

    def recipients(self, channel: str, symbols: Sequence[str]) -> set[Any]:
        """Clients subscribed to any of the symbols on a channel, or to ``*``."""
        by_symbol = self._index.get(channel)
        if not by_symbol:
            return set()
        found = set(by_symbol.get(WILDCARD, ()))
        for symbol in symbols:
            found.update(by_symbol.get(symbol, ()))
        return found

    def route(self, keys: Sequence[tuple[str | None, Sequence[str]]]) -> dict[Any, list[int]]:
        """For a frame's messages, given as (channel, symbols): client -> message indices.

        Indices keep upstream order; each message goes at most once to a client.
        """
        routed: dict[Any, list[int]] = {}
        for position, (channel, symbols) in enumerate(keys):
            if channel is None:
                continue
            for client in self.recipients(channel, symbols):
                routed.setdefault(client, []).append(position)
        return routed
