"""Clustered links on one Clock: roles, the union over nodes, failover and its safety.

A ``FakeCluster`` stands in for NATS: leases with a TTL on the Clock, subjects,
request/reply, every delivery on a later turn as over a socket.  The sessions
and routers are the real ones; each node's upstream link is scripted.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from alpaca_proxy import codec
from alpaca_proxy.cluster import LeaseTaken
from alpaca_proxy.credentials import Credentials
from alpaca_proxy.dialects.alpaca_data import DIALECTS
from alpaca_proxy.dialects.polygon import DIALECTS as POLYGON_DIALECTS
from alpaca_proxy.streams import CRYPTO, POLYGON, STOCKS, Stream
from alpaca_proxy.subscriptions import Change
from alpaca_proxy.upstream.clustered import ClusteredLink
from alpaca_proxy.upstream.session import DataSession

IEX = Stream(STOCKS, "/v2/iex")
PAIR = Credentials("PKCLUSTER", "s3cr3t")
TTL = 4.0


class FakeCluster:
    """Leases, subjects and request/reply, all on one Clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.leases: dict[str, tuple[bytes, int, float]] = {}
        self.subscribers: dict[str, list] = {}
        self.revisions = 0
        self.hang_renewals = False
        #: How long a hung renewal takes to fail (the real bus gives up after TTL / 2).
        self.hang_for = TTL / 2

    def lease(self, key: str):
        entry = self.leases.get(key)
        if entry is not None and entry[2] <= self.clock.seconds():
            del self.leases[key]  # expired TTL seconds after its last write
            entry = None
        return entry

    def write(self, key: str, value: bytes) -> int:
        self.revisions += 1
        self.leases[key] = (value, self.revisions, self.clock.seconds() + TTL)
        return self.revisions


class FakeBus:
    def __init__(self, cluster: FakeCluster, node: str) -> None:
        self.cluster = cluster
        self.node = node
        self.lease_ttl = TTL
        self.connected = True
        self.listeners: list = []
        self.lease_changes = 0
        self.holding: dict = {}

    def _later(self, outcome: Any) -> Deferred:
        waiter: Deferred = Deferred()
        if isinstance(outcome, Exception):
            self.cluster.clock.callLater(0, waiter.errback, outcome)
        else:
            self.cluster.clock.callLater(0, waiter.callback, outcome)
        return waiter

    def set_connected(self, connected: bool) -> None:
        self.connected = connected
        for listener in list(self.listeners):
            listener(connected)

    def listen(self, listener) -> None:
        self.listeners.append(listener)

    def unlisten(self, listener) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)

    def acquire(self, key: str, value: bytes) -> Deferred:
        if not self.connected:
            return fail(LeaseTaken("offline"))
        if self.cluster.lease(key) is not None:
            return self._later(LeaseTaken("held"))
        return self._later(self.cluster.write(key, value))

    def renew(self, key: str, value: bytes, revision: int) -> Deferred:
        if not self.connected:
            return fail(LeaseTaken("offline"))
        if self.cluster.hang_renewals:
            waiter: Deferred = Deferred()  # the real bus gives up after half a TTL
            self.cluster.clock.callLater(self.cluster.hang_for, waiter.errback,
                                         TimeoutError("slow"))
            return waiter
        entry = self.cluster.lease(key)
        if entry is None or entry[1] != revision:
            return self._later(LeaseTaken("lost"))
        return self._later(self.cluster.write(key, value))

    def release(self, key: str, revision: int) -> Deferred:
        entry = self.cluster.lease(key)
        if entry is not None and entry[1] == revision:
            del self.cluster.leases[key]
        return succeed(None)

    def holder(self, key: str) -> Deferred:
        entry = self.cluster.lease(key)
        return self._later(None if entry is None else (entry[0], entry[1]))

    def publish(self, subject: str, data: bytes) -> None:
        if not self.connected:
            return
        for bus, callback in list(self.cluster.subscribers.get(subject, ())):
            if bus.connected:
                self.cluster.clock.callLater(0, callback, data, None)

    def subscribe(self, subject: str, callback) -> Any:
        entry = (self, callback)
        self.cluster.subscribers.setdefault(subject, []).append(entry)
        cluster = self.cluster

        class Handle:
            def stop(self) -> None:
                if entry in cluster.subscribers.get(subject, []):
                    cluster.subscribers[subject].remove(entry)
        return Handle()

    def request(self, subject: str, data: bytes, timeout: float) -> Deferred:
        answers = [(bus, cb) for bus, cb in self.cluster.subscribers.get(subject, ())
                   if bus.connected and bus is not self]
        if not self.connected or not answers:
            return self._later(ConnectionError("no responders"))
        waiter: Deferred = Deferred()
        timer = self.cluster.clock.callLater(timeout, lambda: waiter.called or waiter.errback(
            TimeoutError("timeout")))

        def reply(answer: bytes) -> None:
            if not waiter.called:
                timer.cancel()
                self.cluster.clock.callLater(0, lambda: waiter.called or waiter.callback(answer))
        self.cluster.clock.callLater(0, answers[0][1], data, reply)
        return waiter


class ScriptedUpstream:
    """The holder's provider link: up on the next turn, acks what it holds."""

    tap = None

    def __init__(self, receiver: Any, clock: Clock, log: list) -> None:
        self.receiver = receiver
        self.clock = clock
        self.holding: set = set()
        self.running = False
        self.log = log

    def startService(self) -> None:
        self.running = True
        self.log.append(("up", self))
        self.clock.callLater(0, self._ready)

    def _ready(self) -> None:
        if self.running:
            self.receiver.link_connected()
            self.receiver.link_ready()

    def stopService(self) -> Deferred:
        self.running = False
        self.log.append(("down", self))
        self.receiver.link_down(True)
        return succeed(None)

    def send_change(self, action: str, keys: list) -> None:
        if action == "subscribe":
            self.holding |= set(keys)
        else:
            self.holding -= set(keys)
        held = set(self.holding)
        self.clock.callLater(0, lambda: self.running and self.receiver.acked(held))

    def drop(self) -> None:
        pass

    def inject(self, messages: list, json: bool = False) -> None:
        payload = codec.to_json(messages) if json else codec.to_msgpack(messages)
        if self.tap is not None:
            self.tap(payload, not json)
        split = codec.split_json_frame if json else codec.split_frame
        self.receiver.received(split(payload), len(payload))


class FakeClient:
    encoding = codec.JSON
    messages_sent = 0

    def __init__(self) -> None:
        self.frames: list = []
        self.acks: list = []

    def prepare(self, payload: bytes, binary: bool) -> bytes:
        return payload

    def send_prepared(self, prepared: bytes) -> None:
        self.frames.append(prepared)

    def acknowledge(self, state: Any) -> None:
        self.acks.append(state)

    def refuse(self, code: int) -> None:
        self.acks.append(code)

    def notice(self, message: dict) -> None:
        pass

    def account_refused(self, code: int) -> None:
        pass

    def symbols(self) -> list:
        got = [m.get("S", m.get("sym")) for frame in self.frames for m in codec.decode(frame)]
        self.frames.clear()
        return got


def trade(symbol: str) -> dict:
    return {"T": "t", "S": symbol, "p": 1.0, "t": 1}


class ClusteredLinkTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.cluster = FakeCluster(self.clock)
        self.upstream_log: list = []
        self.nodes: dict[str, tuple[DataSession, ClusteredLink, FakeBus]] = {}

    def node(self, name: str, stream: Stream = IEX) -> tuple[DataSession, ClusteredLink, FakeBus]:
        bus = FakeBus(self.cluster, name)
        dialect = (POLYGON_DIALECTS[stream.path.lstrip("/")] if stream.kind == POLYGON
                   else DIALECTS[stream.kind])
        session = DataSession(stream, PAIR, self.clock, dialect)
        link = ClusteredLink(session, stream, PAIR, bus, self.clock,
                             lambda receiver: ScriptedUpstream(receiver, self.clock,
                                                               self.upstream_log),
                             dialect=dialect)
        session.link = link
        link.startService()
        self.addCleanup(lambda: link.running and link.stopService())
        self.nodes[name] = (session, link, bus)
        self.turns()
        return session, link, bus

    def turns(self, count: int = 10) -> None:
        for _ in range(count):
            self.clock.advance(0)

    def running_upstreams(self) -> list:
        return [u for kind, u in self.upstream_log if kind == "up" and u.running]

    def subscribe(self, session: DataSession, *symbols: str,
                  channel: str = "trades") -> FakeClient:
        client = FakeClient()
        session.attach(client)
        session.request(client, Change("subscribe", {channel: symbols}))
        self.turns()
        return client

    def test_polygon_clusters_are_shared_too(self) -> None:
        """A Polygon cluster's JSON frames reach another node's clients by their keys."""
        stocks = Stream(POLYGON, "/stocks")
        sa, la, _ = self.node("a", stocks)
        sb, lb, _ = self.node("b", stocks)
        ca = self.subscribe(sa, "AAPL", channel="T")
        cb = self.subscribe(sb, "MSFT", channel="T")
        [upstream] = self.running_upstreams()
        self.assertEqual(upstream.holding, {("T", "AAPL"), ("T", "MSFT")})
        upstream.inject([{"ev": "T", "sym": "AAPL", "p": 1.0, "t": 1},
                         {"ev": "T", "sym": "MSFT", "p": 2.0, "t": 1},
                         {"ev": "T", "sym": "TSLA", "p": 3.0, "t": 1}], json=True)
        self.turns()
        self.assertEqual((ca.symbols(), cb.symbols()), (["AAPL"], ["MSFT"]))

    def test_a_follower_joining_a_streamed_book_gets_it_whole(self) -> None:
        """Whole books travel with the holder's ack: a client on another node that joins
        a crypto book the upstream already streams gets it whole first, as from Alpaca."""
        crypto = Stream(CRYPTO, "/v1beta3/crypto/us")
        sa, la, _ = self.node("a", crypto)
        sb, lb, _ = self.node("b", crypto)
        self.subscribe(sa, "BTC/USD", channel="orderbooks")
        [upstream] = self.running_upstreams()
        upstream.inject([{"T": "o", "S": "BTC/USD", "t": 1, "r": True,
                          "b": [{"p": 100.0, "s": 1.0}], "a": [{"p": 101.0, "s": 2.0}]}])
        upstream.inject([{"T": "o", "S": "BTC/USD", "t": 2, "b": [{"p": 99.0, "s": 3.0}],
                          "a": []}])
        self.turns()
        late = self.subscribe(sb, "BTC/USD", channel="orderbooks")
        [state] = late.acks
        self.assertEqual(list(state["orderbooks"]), ["BTC/USD"])
        [book] = [m for frame in late.frames for m in codec.decode(frame)]
        self.assertEqual(book["r"], True)
        self.assertEqual(book["b"], [{"p": 100.0, "s": 1.0}, {"p": 99.0, "s": 3.0}])
        self.assertEqual(book["a"], [{"p": 101.0, "s": 2.0}])

    def test_a_holder_and_a_follower_share_one_upstream(self) -> None:
        """One node dials; the other's subscriptions join the union through it; each
        node's clients get their own symbols from the one upstream."""
        sa, la, _ = self.node("a")
        sb, lb, _ = self.node("b")
        self.assertEqual((la.role, lb.role), ("holder", "follower"))
        self.assertEqual(lb.holder, "a")
        ca = self.subscribe(sa, "AAPL")
        cb = self.subscribe(sb, "MSFT")
        self.assertEqual(len(cb.acks), 1)  # acknowledged after the upstream's ack
        [upstream] = self.running_upstreams()
        self.assertEqual({s for c, s in upstream.holding if c == "trades"}, {"AAPL", "MSFT"})
        upstream.inject([trade("AAPL"), trade("MSFT"), trade("TSLA")])
        self.turns()
        self.assertEqual((ca.symbols(), cb.symbols()), (["AAPL"], ["MSFT"]))
        self.assertEqual(la.remote_nodes, ["b"])

    def test_losing_the_bus_closes_the_upstream_before_the_lease_can_pass(self) -> None:
        sa, la, bus_a = self.node("a")
        sb, lb, _ = self.node("b")
        cb = self.subscribe(sb, "MSFT")
        bus_a.set_connected(False)
        self.assertEqual(self.running_upstreams(), [])  # at once
        self.assertEqual(la.role, "contending")
        most = 0
        for _ in range(int(TTL * 10) + 20):
            self.clock.advance(0.1)
            most = max(most, len(self.running_upstreams()))
        self.assertEqual(most, 1)
        self.assertEqual(lb.role, "holder")
        [upstream] = self.running_upstreams()
        self.assertIn(("trades", "MSFT"), upstream.holding)  # the follower's union came
        upstream.inject([trade("MSFT")])
        self.turns()
        self.assertEqual(cb.symbols(), ["MSFT"])

    def test_a_holder_that_cannot_renew_lets_go_before_the_lease_expires(self) -> None:
        for hang in (TTL / 2, TTL * 2):  # failing late, or not before the lease is gone
            self.setUp()
            self.cluster.hang_for = hang
            self.lets_go_in_time()

    def lets_go_in_time(self) -> None:
        sa, la, _ = self.node("a")
        self.cluster.hang_renewals = True
        lease_expires = self.cluster.leases[next(iter(self.cluster.leases))][2]
        for _ in range(int(TTL * 40)):
            if not self.running_upstreams():
                break
            self.clock.advance(0.05)
        self.assertLess(self.clock.seconds(), lease_expires)
        self.assertEqual(la.role, "contending")

    def test_a_silent_node_loses_its_interest(self) -> None:
        """A follower that stops pinging (it died) leaves the union after 1.5 TTL."""
        sa, la, _ = self.node("a")
        sb, lb, bus_b = self.node("b")
        self.subscribe(sa, "AAPL")
        self.subscribe(sb, "MSFT")
        [upstream] = self.running_upstreams()
        self.assertIn(("trades", "MSFT"), upstream.holding)
        lb._ticker.stop()  # as if killed: no leave, no pings
        bus_b.connected = False
        for _ in range(int(TTL * 2 * 10)):
            self.clock.advance(0.1)
        self.assertEqual(la.remote_nodes, [])
        self.assertNotIn(("trades", "MSFT"), upstream.holding)
        self.assertIn(("trades", "AAPL"), upstream.holding)

    def test_closing_releases_the_lease_for_a_quick_takeover(self) -> None:
        sa, la, _ = self.node("a")
        sb, lb, _ = self.node("b")
        la.stopService()
        self.assertEqual(self.cluster.leases, {})
        for _ in range(int(TTL / 4 * 10) + 5):
            self.clock.advance(0.1)
        self.assertEqual(lb.role, "holder")

    def test_the_holder_bounds_what_other_nodes_make_it_keep(self) -> None:
        """Nodes past MAX_REMOTE_NODES are ignored; a change naming too many keys is
        refused with 405 (a node's router never sends more than 1,000)."""
        from alpaca_proxy.upstream import clustered

        self.patch(clustered, "MAX_REMOTE_NODES", 2)
        sa, la, bus_a = self.node("a")
        answers = []
        for n in range(4):
            la._request(codec.to_json({"node": "n%d" % n, "op": "hello"}), answers.append)
        self.assertEqual(la.remote_nodes, ["n0", "n1"])
        keys = [["trades", "S%d" % i] for i in range(clustered.MAX_REMOTE_KEYS + 1)]
        la._request(codec.to_json({"node": "n0", "op": "change", "action": "subscribe",
                                   "keys": keys}), answers.append)
        self.assertEqual(codec.decode(answers[-1]), {"refused": 405})
