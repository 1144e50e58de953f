"""The link of a session when proxies share upstreams over the bus (``--bus``).

For each (account, endpoint) one node in the cluster holds the upstream
connection: the one holding the lease (a key in a JetStream key-value bucket
that expires ``lease_ttl`` seconds after its last renewal).  Every node's
session has a ``ClusteredLink``, in one of three roles:

- **holder**: it runs the real upstream link (``make_upstream``), renews the
  lease every quarter TTL, puts each upstream frame on the bus once, and
  serves the other nodes' subscription changes: each node is one more client of
  its router (a ``RemoteNode``), so the union, the acks and the 2.5 s deadline
  are the router's own.  A node not heard from for 1.5 TTL is detached (its
  interest expires with it).  Losing the bus, or a renewal, closes the upstream
  at once: the lease can only pass once the holder has let go.
- **follower**: frames come from the bus, each change goes to the holder as a
  request and its reply is the ack (or the refusal); a ping every quarter TTL
  keeps its interest alive.  Every quarter TTL it also tries to take the lease,
  which succeeds once the holder is gone and the lease has expired.
- **contending**: neither yet (no bus, or between roles).

The session sees a link that goes down and comes up again when the role
changes; its router then sends the whole union to the new side, and clients
see only a gap.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from alpaca_proxy import codec
from alpaca_proxy.cluster import LeaseTaken, subjects
from alpaca_proxy.streams import TRADING, Stream
from alpaca_proxy.subscriptions import Change, Key, keys_of
from alpaca_proxy.upstream.link import IDataReceiver, IEventReceiver, ILink
from alpaca_proxy.upstream.replay import data_elements, trading_events
from alpaca_proxy.upstream.session import ACK_DEADLINE

def _array(raws: list[bytes]) -> bytes:
    """A MessagePack array of already-encoded elements."""
    count = len(raws)
    head = bytes((0x90 | count,)) if count < 16 else b"\xdc" + count.to_bytes(2, "big")
    return head + b"".join(raws)


#: Other nodes one holder serves on one upstream, at most; more are ignored.  Nodes are
#: trusted peers (NATS's own auth decides who is one), but a bus client must not make
#: the holder keep unbounded state.
MAX_REMOTE_NODES = 256
#: Keys one node's change may name (a node's router sends chunks of 1,000).
MAX_REMOTE_KEYS = 1000
#: A request to the holder not answered in this long counts as the holder lost.
REQUEST_TIMEOUT = ACK_DEADLINE * 2


class RemoteNode:
    """Another node, as one client of the holder's router: its state is that node's
    interest; acks and refusals become replies to its requests; data reaches it over
    the bus once per frame, so the fan-out skips it (no encoding).

    Whole order books the router hands a joining client (``fanout.snapshot``) ride on
    the ack's reply: the other node passes them to its clients right after the ack,
    as Alpaca sends a whole book after acknowledging a subscription.
    """

    encoding = None
    client_id = 0
    peer_name = None
    messages_sent = 0

    def __init__(self, name: str, clock: Any) -> None:
        self.name = name
        self.clock = clock
        self.seen = clock.seconds()
        self.replies: deque[Callable[[bytes], None] | None] = deque()
        #: The last ack, held back until the router has added any whole books to it.
        self._ack: tuple[Any, dict] | None = None
        self.books: list[bytes] = []

    def __repr__(self) -> str:
        return "<RemoteNode %s>" % (self.name,)

    def acknowledge(self, state: Any) -> None:
        self.flush()
        self._ack = (self.replies.popleft() if self.replies else None,
                     {"ack": sorted(keys_of(state))})
        self.clock.callLater(0, self.flush)  # after the router's books for this ack

    def keep_books(self, raws: list[bytes]) -> None:
        """Whole books for the ack just given (``fanout.snapshot``)."""
        self.books.extend(raws)

    def flush(self) -> None:
        """Send the held-back ack, with the books that came after it."""
        if self._ack is None:
            return
        reply, answer = self._ack
        self._ack = None
        if self.books:
            answer["books"], self.books = self.books, []
        if reply is not None:
            reply(codec.to_msgpack(answer))

    def refuse(self, code: int) -> None:
        self.flush()
        reply = self.replies.popleft() if self.replies else None
        if reply is not None:
            reply(codec.to_msgpack({"refused": code}))

    def notice(self, message: dict) -> None:
        """Upstream's notices reach the holder's own clients only."""

    def account_refused(self, code: int) -> None:
        """Each node's own sessions hear of a refusal from their own verdict."""

    def prepare(self, payload: bytes, binary: bool) -> Any:
        return None

    def send_prepared(self, prepared: Any) -> None:
        """Never called: the fan-out skips clients without an encoding."""

    def drained(self) -> Deferred:
        return succeed(None)

    def close(self, code: int, reason: str) -> None:
        pass


@implementer(IDataReceiver, IEventReceiver)
class _Upstream:
    """The receiver of the holder's upstream link: passes its reports on while that
    link is the current one (a link closed on stepping down reports late)."""

    def __init__(self, link: "ClusteredLink", generation: int) -> None:
        self._link = link
        self._generation = generation

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name not in _REPORTS:
            raise AttributeError(name)

        def report(*args: Any) -> None:
            link = self._link
            if link._generation == self._generation and link.role == "holder":
                link._from_upstream(name, *args)
        setattr(self, name, report)  # made once: ``received`` comes with every frame
        return report


_REPORTS = frozenset({"link_connected", "link_ready", "link_refused", "link_down", "link_failed",
                      "acked", "request_refused", "upstream_error", "received", "event"})


@implementer(ILink)
class ClusteredLink(Service):
    """A session's link under ``--bus``."""

    _log = Logger()

    def __init__(self, receiver: Any, stream: Stream, credentials: Any, bus: Any, clock: Any,
                 make_upstream: Callable[[Any], Any], dialect: Any = None,
                 symbol_feed: bool = False) -> None:
        self.receiver = receiver
        self.stream = stream
        self.credentials = credentials
        self.bus = bus
        self.clock = clock
        self.dialect = dialect
        self.symbol_feed = symbol_feed
        self._make_upstream = make_upstream
        self.ready = False
        self.role = "contending"
        #: The node holding the lease (this one's name when holding), and since when.
        self.holder: str | None = None
        self.holder_since: float | None = None
        self._key = subjects.lease_key(credentials.key, stream.path)
        self._frames = subjects.frames(credentials.key, stream.path)
        self._changes = subjects.changes(credentials.key, stream.path)
        self._revision: int | None = None
        self._renewed_at = 0.0
        self._upstream: Any = None
        self._serving: Any = None
        self._following: Any = None
        self._remotes: dict[str, RemoteNode] = {}
        #: Follower: changes sent to the holder, oldest first (answers are applied in order).
        self._asked: deque[list] = deque()
        self._generation = 0
        self._busy = False
        #: (holder, since) of a lease whose holder stopped answering.
        self._silent: tuple[Any, Any] = (None, None)
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = clock

    def __repr__(self) -> str:
        return "<ClusteredLink %s %s %s>" % (self.stream.path, self.credentials.key, self.role)

    @property
    def _ttl(self) -> float:
        return self.bus.lease_ttl

    def _lease_value(self) -> bytes:
        return codec.to_json({"node": self.bus.node, "since": self.holder_since})

    # -- the service -------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.bus.listen(self._bus_changed)
        self._ticker.start(self._ttl / 4, now=True)

    def stopService(self) -> Deferred:
        super().stopService()
        return self.close()

    def close(self) -> Deferred:
        """Let go: the lease (at once, so another node may take over), the upstream, the bus."""
        self.bus.unlisten(self._bus_changed)
        if self._ticker.running:
            self._ticker.stop()
        if self.role == "follower":
            self.bus.publish(self._changes, codec.to_json({"node": self.bus.node,
                                                           "op": "leave"}))
        if self.role == "holder" and self._revision is not None:
            self.bus.release(self._key, self._revision)
        return self._become("contending")

    # -- roles ---------------------------------------------------------------------------

    def _tick(self) -> None:
        if self.role == "holder" and self.clock.seconds() - self._renewed_at > self._ttl * 0.6:
            # Checked at every tick, a renewal still under way or not: holding on any
            # longer could overlap another node's turn (worst case 0.85 TTL).
            self._log.warn("bus: could not renew the lease on {path} in time; closing upstream",
                           path=self.stream.path)
            self._stepped_down()
            return
        if not self.bus.connected or self._busy:
            return
        if self.role == "holder":
            self._renew()
            self._expire_remotes()
            return
        self._busy = True
        self.bus.acquire(self._key, codec.to_json({"node": self.bus.node,
                                                   "since": self.clock.seconds()})).addCallbacks(
            self._acquired, self._taken).addBoth(self._idle)
        if self.role == "follower":
            self._ping()

    def _idle(self, outcome: Any) -> Any:
        self._busy = False
        return None

    def _acquired(self, revision: int) -> None:
        if not self.running:
            self.bus.release(self._key, revision)
            return
        self._revision = revision
        self._renewed_at = self.clock.seconds()
        self.holder_since = self._renewed_at
        self.holder = self.bus.node
        self.bus.lease_changes += 1
        self.bus.holding[self._key] = self.holder_since
        self._log.info("bus: this node now holds {path} ({key})", path=self.stream.path,
                       key=self.credentials.key)
        self._become("holder")

    def _taken(self, failure: Any) -> Deferred | None:
        if not self.running or not self.bus.connected:
            return None
        return self.bus.holder(self._key).addCallback(self._follow).addErrback(lambda _: None)

    def _follow(self, lease: Any) -> None:
        if lease is None or not self.running:
            return  # freed meanwhile: the next tick takes it
        record = codec.decode(lease[0])
        holder, since = record.get("node"), record.get("since")
        if holder == self.bus.node:
            return  # our own lease from before a restart: it expires, then we take it
        if self.role == "follower" and holder == self.holder:
            return
        if (holder, since) == self._silent:
            return  # it stopped answering: wait for its lease to expire, then take it
        self.holder, self.holder_since = holder, since
        self._log.info("bus: {path} ({key}) is held by {holder}; following",
                       path=self.stream.path, key=self.credentials.key, holder=holder)
        self._become("follower")

    def _renew(self) -> None:
        self._busy = True
        self.bus.renew(self._key, self._lease_value(), self._revision).addCallbacks(
            self._renewed, self._lost).addBoth(self._idle)

    def _renewed(self, revision: int) -> None:
        if self.role == "holder":
            self._revision = revision
            self._renewed_at = self.clock.seconds()

    def _lost(self, failure: Any) -> None:
        if self.role == "holder" and failure.check(LeaseTaken) and self.bus.connected:
            self._log.warn("bus: the lease on {path} was lost; closing upstream",
                           path=self.stream.path)
            self._stepped_down()

    def _stepped_down(self) -> None:
        self.bus.lease_changes += 1
        self._become("contending")

    def _bus_changed(self, connected: bool) -> None:
        if not connected and self.role == "holder":
            self._stepped_down()  # before the lease can pass to another node
        elif not connected and self.role == "follower":
            self._become("contending")
        elif connected and self.running:
            self._tick()

    def _become(self, role: str) -> Deferred:
        """Leave the current role (the session sees the link go down), enter ``role``."""
        previous, self.role = self.role, role
        self._generation += 1
        closing: Deferred = succeed(None)
        if previous == "holder":
            self.bus.holding.pop(self._key, None)
            self._revision = None
            if self._serving is not None:
                self._serving.stop()
                self._serving = None
            for remote in list(self._remotes.values()):
                self.receiver.detach(remote)
            self._remotes.clear()
            upstream, self._upstream = self._upstream, None
            if upstream is not None:
                closing = upstream.stopService() or succeed(None)  # link_down comes through us
        if previous == "follower":
            if self._following is not None:
                self._following.stop()
                self._following = None
            self._asked.clear()
        if self.ready:
            self.ready = False
            self.receiver.link_down(True)
        if role == "holder":
            self._serving = self.bus.subscribe(self._changes, self._request)
            self._upstream = self._make_upstream(_Upstream(self, self._generation))
            recorder_tap = self._upstream.tap
            if recorder_tap is None:
                self._upstream.tap = self.tap
            else:
                def both(payload: bytes, binary: bool) -> None:
                    recorder_tap(payload, binary)
                    self.tap(payload, binary)
                self._upstream.tap = both
            self._upstream.startService()
        elif role == "follower":
            self._start_following()
        else:
            self.holder = self.holder_since = None
        return closing

    # -- follower --------------------------------------------------------------------------

    def _start_following(self) -> None:
        self._following = self.bus.subscribe(self._frames, self._frame)
        generation = self._generation
        self.receiver.link_connected()

        def hello(answer: bytes) -> None:
            if generation != self._generation:
                return
            self.ready = True
            self.receiver.link_ready()  # the router sends the whole union to the holder

        self.bus.request(self._changes, codec.to_json({"node": self.bus.node, "op": "hello"}),
                         REQUEST_TIMEOUT).addCallbacks(hello, self._holder_silent,
                                                       errbackArgs=(generation,))

    def _holder_silent(self, failure: Any, generation: int) -> None:
        if generation == self._generation and self.role == "follower":
            self._log.info("bus: {holder}, holding {path}, does not answer ({error}); taking"
                           " over once its lease expires", holder=self.holder,
                           path=self.stream.path, error=failure.getErrorMessage())
            self._silent = (self.holder, self.holder_since)
            self._become("contending")

    def _frame(self, data: bytes, reply: Any) -> None:
        if not self.ready or len(data) < 1:
            return
        payload = data[1:]
        if self.stream.kind == TRADING:
            for event in trading_events(payload):
                self.receiver.event(event["stream"], event, payload, data[:1] == b"B")
            return
        try:
            elements = data_elements(self.stream.kind, payload)
        except codec.DecodeError:
            return
        self.receiver.received(elements, len(payload))

    def _ping(self) -> None:
        generation = self._generation
        self.bus.request(self._changes, codec.to_json({"node": self.bus.node, "op": "ping"}),
                         REQUEST_TIMEOUT).addErrback(self._holder_silent, generation)

    # -- ILink ------------------------------------------------------------------------------

    def send_change(self, action: str, keys: list[Key]) -> None:
        if self.role == "holder":
            if self._upstream is not None:
                self._upstream.send_change(action, keys)
            return
        if self.role != "follower" or not self.ready:
            return  # answered from local state; the union goes up once the link is ready
        slot: list = [None]
        self._asked.append(slot)
        generation = self._generation
        request = {"node": self.bus.node, "op": "change", "action": action,
                   "keys": [list(key) for key in keys]}

        def answered(data: bytes) -> None:
            if generation != self._generation:
                return
            slot[0] = codec.decode(data)
            while self._asked and self._asked[0][0] is not None:
                answer = self._asked.popleft()[0]
                if "refused" in answer:
                    self.receiver.request_refused(answer["refused"])
                    continue
                self.receiver.acked({tuple(key) for key in answer.get("ack", ())})
                books = [raw for raw in answer.get("books", ()) if isinstance(raw, bytes)]
                if books:  # whole books, after the ack, as upstream sends them
                    frame = _array(books)
                    self.receiver.received(codec.split_frame(frame), len(frame))

        self.bus.request(self._changes, codec.to_json(request), REQUEST_TIMEOUT).addCallbacks(
            answered, self._holder_silent, errbackArgs=(generation,))

    def drop(self) -> None:
        if self.role == "holder" and self._upstream is not None:
            self._upstream.drop()

    # -- holder: the other nodes' requests --------------------------------------------------

    def _request(self, data: bytes, reply: Any) -> None:
        if self.role != "holder":
            return
        try:
            request = codec.decode(data)
            node = str(request["node"])
            op = request["op"]
        except (codec.DecodeError, KeyError, TypeError):
            return
        if node == self.bus.node:
            return
        now = self.clock.seconds()
        remote = self._remotes.get(node)
        if op == "leave":
            if remote is not None:
                self._detach(remote)
            return
        if op == "hello" and remote is not None:
            self._detach(remote)  # it starts over: whatever it held before is gone
            remote = None
        if remote is None:
            if len(self._remotes) >= MAX_REMOTE_NODES:
                self._log.warn("bus: ignoring node {node} on {path}: {count} nodes are served"
                               " already", node=node[:64], path=self.stream.path,
                               count=len(self._remotes))
                return
            remote = self._remotes[node] = RemoteNode(node, self.clock)
            self.receiver.attach(remote)
        remote.seen = now
        if op == "change" and hasattr(self.receiver, "request"):
            keys = request.get("keys", ())
            if not isinstance(keys, list) or len(keys) > MAX_REMOTE_KEYS:
                if reply is not None:
                    reply(codec.to_msgpack({"refused": 405}))
                return
            channels: dict[str, list[str]] = {}
            for channel, symbol in keys:
                channels.setdefault(str(channel), []).append(str(symbol))
            remote.replies.append(reply)
            self.receiver.request(remote, Change(
                "subscribe" if request.get("action") == "subscribe" else "unsubscribe",
                {channel: tuple(symbols) for channel, symbols in channels.items()}))
            remote.flush()  # an immediate ack (and its books) goes now
        elif reply is not None:
            reply(codec.to_json({"ok": True, "holder": self.bus.node}))

    def _detach(self, remote: RemoteNode) -> None:
        self._remotes.pop(remote.name, None)
        self.receiver.detach(remote)

    def _expire_remotes(self) -> None:
        deadline = self.clock.seconds() - self._ttl * 1.5
        for remote in list(self._remotes.values()):
            if remote.seen < deadline:
                self._log.info("bus: node {node} went quiet; its interest in {path} expires",
                               node=remote.name, path=self.stream.path)
                self._detach(remote)

    @property
    def remote_nodes(self) -> list[str]:
        return sorted(self._remotes)

    # -- the upstream link's receiver (holder) -------------------------------------------------

    def tap(self, payload: bytes, binary: bool) -> None:
        """Each upstream frame, once, on the bus."""
        self.bus.publish(self._frames, (b"B" if binary else b"T") + payload)

    def _from_upstream(self, name: str, *args: Any) -> None:
        """What the upstream link reports, passed to the session (``_Upstream``)."""
        if name == "link_ready":
            self.ready = True
        elif name == "link_down":
            was_ready, self.ready = self.ready, False
            args = (args[0] and was_ready,)
        elif name == "received" and self.symbol_feed and self.dialect is not None:
            for element in args[0]:
                channel, symbols = self.dialect.routing(element.message)
                for symbol in symbols:
                    self.bus.publish(subjects.symbol_feed(self.stream.path, channel or "_",
                                                          symbol), element.json)
        getattr(self.receiver, name)(*args)

    def snapshot(self) -> dict[str, Any]:
        return {"endpoint": self.stream.path, "account": self.credentials.key,
                "role": self.role, "holder": self.holder,
                "lease_age": round(self.clock.seconds() - self.holder_since, 1)
                if self.holder_since else None,
                "nodes_served": self.remote_nodes}
