"""Subscriptions of many clients over one upstream session, and data fan-out.

Pure: no reactor, no sockets.  Clients are ``interfaces.IClient`` providers,
answered through ``fanout`` (``acknowledge``, ``refuse``); the upstream side is
any object with ``send_change(action, keys)`` (the session, which passes it to
its link), given with ``upstream_ready``.

Bookkeeping, in short:

- Each client has a *confirmed* state (what it was last acknowledged; data is
  routed by it) and at most one *pending* request.  Requests that arrive while
  one is pending wait, and are then taken up together: upstream is asked for
  their net effect once, and each is still acknowledged, in order, with the
  state it leads to (or refused, all of them, if upstream refuses).
- ``_wanted`` counts, per (channel, symbol) key, the clients whose state (the
  pending one if any) holds it.  Only changes of that union go upstream.
- Upstream answers requests in order, so every message sent upstream is queued
  in ``_sent`` and each ``subscription`` ack or request error pops the head.
  The ack lists upstream's whole state, which becomes ``_have``.
- Changes are coalesced: while anything is in flight upstream, nothing more is
  sent; once it is all answered, the net difference between the union and what
  upstream holds goes up at once.  A client flipping symbols on and off costs
  upstream one request per round trip at most, not one per message.  Large
  changes go up in chunks of ``CHUNK`` keys, each acknowledged on its own.
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

#: Keys per upstream (un)subscribe message.  Users of the C# SDK report Alpaca's
#: servers mishandling single subscribe frames of about 1,400 symbols and more;
#: 1,000 keys stay well below that and below any frame-size limit (~20 KB).
CHUNK = 1000

_NOBODY: frozenset[Any] = frozenset()


def _delta(old: State, new: State, changes: Iterable[Change]) -> tuple[set[Key], set[Key]]:
    """Keys ``new`` has that ``old`` has not, and the reverse, among those ``changes`` name."""
    added, removed = set(), set()
    for change in changes:
        for channel, symbols in change.channels.items():
            before, after = old.get(channel, {}), new.get(channel, {})
            for symbol in symbols:
                if symbol in after:
                    if symbol not in before:
                        added.add((channel, symbol))
                elif symbol in before:
                    removed.add((channel, symbol))
    return added, removed


@define
class _Pending:
    state: State
    needed: set[Key]
    #: Keys this request adds that upstream already streams.
    held: set[Key] = field(factory=set)
    #: States of earlier requests taken up together with this one, each to be
    #: acknowledged (in order) before ``state``.
    earlier: list[State] = field(factory=list)
    #: Keys ``state`` has and the confirmed state has not, and the reverse.
    added: set[Key] = field(factory=set)
    removed: set[Key] = field(factory=set)


@define
class _Book:
    confirmed: State = field(factory=dict)
    pending: _Pending | None = None
    #: Requests waiting behind the pending one (a list: a deque costs 0.7 KiB a client).
    queue: list[Change] = field(factory=list)
    #: The state once every request of the client is done, and its size; kept in
    #: step with each request so limits count what is still waiting, too.
    latest: State = field(factory=dict)
    latest_size: int = 0
    #: Symbols named by the requests in ``queue``.
    queued_symbols: int = 0

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
        #: Per channel and symbol, everyone a message there goes to (wildcard
        #: subscribers included), built on first use after any change to it by
        #: ``audience``; read by the session's fan-out loop, written only here.
        self.audiences: dict[str, dict[str, frozenset[Any]]] = {}
        #: One object per distinct audience, so that a frame's messages group by
        #: identity however many symbols share the same subscribers.
        self._distinct: dict[frozenset[Any], frozenset[Any]] = {}
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
        self._reindex(client, set(), keys_of(book.confirmed))
        self._count(keys_of(book.current), -1)
        self._reconcile()

    def state(self, client: Any) -> State:
        """A client's confirmed state."""
        return self._books[client].confirmed

    def size_after(self, client: Any, change: Change) -> int:
        """How many keys the client will hold once this and its waiting requests are done."""
        book = self._books[client]
        if change.action != "subscribe":
            return book.latest_size
        added = 0
        for channel, symbols in change.channels.items():
            added += len(set(symbols).difference(book.latest.get(channel, ())))
        return book.latest_size + added

    def queued_symbols(self, client: Any) -> int:
        """Symbols named by the client's requests still waiting behind its pending one."""
        return self._books[client].queued_symbols

    def request(self, client: Any, change: Change) -> None:
        """Apply a client's (un)subscribe, now or after its earlier ones finish."""
        book = self._books[client]
        self._track_latest(book, change)
        if book.pending is not None or book.queue:
            book.queue.append(change)
            book.queued_symbols += change.size
            return
        self._start(client, book, change)

    def _track_latest(self, book: _Book, change: Change) -> None:
        for channel, symbols in change.channels.items():
            if change.action == "subscribe":
                held = book.latest.setdefault(channel, {})
                before = len(held)
                held.update(dict.fromkeys(symbols))
                book.latest_size += len(held) - before
            else:
                held = book.latest.get(channel)
                if held is None:
                    continue
                for symbol in symbols:
                    if held.pop(symbol, 0) is None:
                        book.latest_size -= 1
                if not held:
                    del book.latest[channel]

    def _start(self, client: Any, book: _Book, *changes: Change) -> None:
        states = []
        state = book.confirmed
        for change in changes:
            state = applied(state, change)
            states.append(state)
        new, earlier = states[-1], states[:-1]
        # Only the symbols the changes name can differ: no walk over the whole state.
        added, removed = _delta(book.confirmed, new, changes)
        self._count(added, +1)
        self._count(removed, -1)
        if self._link is None:
            self._confirm(client, book, _Pending(new, set(), set(), earlier, added, removed))
            return
        needed = added - self._stable()
        self._refused -= needed  # asked for again: let upstream judge it again
        if not needed:
            self._confirm(client, book, _Pending(new, set(), added, earlier, added, removed))
            self._reconcile()
            return
        book.pending = _Pending(new, needed, added - needed, earlier, added, removed)
        self._reconcile()

    def _confirm(self, client: Any, book: _Book, done: _Pending) -> None:
        self._reindex(client, done.added, done.removed)
        book.confirmed = done.state
        book.pending = None
        for state in done.earlier:
            fanout.acknowledge(client, state)
        fanout.acknowledge(client, done.state)
        if done.held and self._on_join is not None:
            self._on_join(client, done.held)
        self._next(client, book)

    def _rollback(self, client: Any, book: _Book, code: int) -> None:
        assert book.pending is not None
        self._count(book.pending.added, -1)
        self._count(book.pending.removed, +1)
        answers = 1 + len(book.pending.earlier)
        book.pending = None
        # What the client will hold: its confirmed state with the waiting requests on top.
        book.latest, book.latest_size = {}, 0
        self._track_latest(book, Change("subscribe", {
            channel: tuple(symbols) for channel, symbols in book.confirmed.items()}))
        for change in book.queue:
            self._track_latest(book, change)
        for _ in range(answers):
            fanout.refuse(client, code)
        self._next(client, book)

    def _next(self, client: Any, book: _Book) -> None:
        if book.queue and book.pending is None and self._books.get(client) is book:
            changes = list(book.queue)
            book.queue.clear()
            book.queued_symbols = 0
            self._start(client, book, *changes)

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
                # Upstream streams nothing now: no key is "already held".
                pending = book.pending
                self._confirm(client, book, _Pending(pending.state, set(), set(), pending.earlier,
                                                     pending.added, pending.removed))

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
                self._confirm(client, book, book.pending)
        # Stop waiting for the answers, or a lost ack would hold back every later
        # change; late acks still tell what upstream holds.
        self._sent.clear()
        self._reconcile()
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
                self._confirm(client, book, book.pending)
        self._reconcile()

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
        if self._link is None or self._sent:
            return
        projected, wanted = self._projected(), set(self._wanted)
        batch: list[_Sent] = []
        removing = projected - wanted
        if removing:
            batch += self._chunks("unsubscribe", removing, None)
        adding = wanted - projected - self._refused
        if adding:
            origin = next(
                (client for client, book in self._books.items()
                 if book.pending is not None and book.pending.needed & adding),
                None,
            )
            batch += self._chunks("subscribe", adding, origin)
        # All of the batch is in flight before any of it is sent: an answer that
        # comes back at once (a local link) must not start another batch.
        self._sent.extend(batch)
        for sent in batch:
            self._link.send_change(sent.action, sorted(sent.keys))

    def _chunks(self, action: str, keys: set[Key], origin: Any) -> list[_Sent]:
        """The change as messages of at most ``CHUNK`` keys; each carries the origin
        only if it holds keys the origin waits for."""
        ordered = sorted(keys)
        pending = self._books[origin].pending if origin is not None else None
        chunks = []
        for start in range(0, len(ordered), CHUNK):
            chunk = frozenset(ordered[start:start + CHUNK])
            owner = origin if pending is not None and pending.needed & chunk else None
            chunks.append(_Sent(action, chunk, owner))
        return chunks

    def _count(self, keys: Iterable[Key], delta: int) -> None:
        for key in keys:
            count = self._wanted[key] + delta
            if count > 0:
                self._wanted[key] = count
            else:
                del self._wanted[key]
                self._refused.discard(key)

    # -- data ----------------------------------------------------------------

    def _reindex(self, client: Any, added: Iterable[Key], removed: Iterable[Key]) -> None:
        for channel, symbol in removed:
            by_symbol = self._index[channel]
            by_symbol[symbol].discard(client)
            if not by_symbol[symbol]:
                del by_symbol[symbol]
            self._forget_audience(channel, symbol)
        for channel, symbol in added:
            self._index.setdefault(channel, {}).setdefault(symbol, set()).add(client)
            self._forget_audience(channel, symbol)

    def _forget_audience(self, channel: str, symbol: str) -> None:
        audiences = self.audiences.get(channel)
        if not audiences:
            return
        if symbol == WILDCARD:
            audiences.clear()  # every symbol's audience included the wildcard's
        else:
            audiences.pop(symbol, None)

    def audience(self, channel: str, symbol: str) -> frozenset[Any]:
        """Everyone subscribed to a symbol on a channel, or to ``*``.

        The same object for every symbol with the same subscribers, built once
        per change of them: the hot path is a dictionary lookup.
        """
        audiences = self.audiences.get(channel)
        if audiences is not None:
            found = audiences.get(symbol)
            if found is not None:
                return found
        by_symbol = self._index.get(channel)
        if not by_symbol:
            return _NOBODY
        members = frozenset(by_symbol.get(symbol, ())).union(by_symbol.get(WILDCARD, ()))
        if not members:
            return _NOBODY  # not kept: symbols nobody wants must not fill the cache
        if len(self._distinct) > 64 + 2 * sum(map(len, self.audiences.values())):
            self._distinct = {kept: kept for audiences in self.audiences.values()
                              for kept in audiences.values()}
        members = self._distinct.setdefault(members, members)
        self.audiences.setdefault(channel, {})[symbol] = members
        return members

    def audience_of(self, channel: str, symbols: Sequence[str]) -> frozenset[Any]:
        """Everyone a message concerning several symbols goes to (news), or none."""
        if len(symbols) == 1:
            return self.audience(channel, symbols[0])
        if not symbols:
            return self.audience(channel, WILDCARD)
        members = frozenset().union(*(self.audience(channel, symbol) for symbol in symbols))
        return self._distinct.get(members, members)

    def recipients(self, channel: str, symbols: Sequence[str]) -> set[Any]:
        """Clients subscribed to any of the symbols on a channel, or to ``*``."""
        return set(self.audience_of(channel, symbols))

    def route(self, keys: Sequence[tuple[str | None, Sequence[str]]]) -> dict[Any, list[int]]:
        """For a frame's messages, given as (channel, symbols): client -> message indices.

        Indices keep upstream order; each message goes at most once to a client.
        """
        routed: dict[Any, list[int]] = {}
        for position, (channel, symbols) in enumerate(keys):
            if channel is None:
                continue
            for client in self.audience_of(channel, symbols):
                routed.setdefault(client, []).append(position)
        return routed
